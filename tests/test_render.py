"""`lmmr1 data render`: text problems with LaTeX maths -> image problems (LMM-R1's FRE-Multi data)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmmr1.data import PromptDataset
from lmmr1.data.dataset import DataError
from lmmr1.data.render import ProblemRenderer, RenderConfig, normalize_latex, split_maths
from lmmr1.data.render_rows import DEFAULT_INSTRUCTION, render_dataset
from lmmr1.errors import LmmR1Error

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def renderer():
    return ProblemRenderer(RenderConfig())


def ink(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L")) < 128


def ink_box(img: Image.Image) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) of the dark pixels."""
    ys, xs = np.nonzero(ink(img))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def deepscaler_like(n: int, seed: int = 0) -> list[dict]:
    """Rows shaped like DeepScaleR's (a text user turn with $...$ maths, an answer, extra fields)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c, d = (rng.randint(2, 19) for _ in range(4))
        k = i % 5
        if k == 0:
            q, ans = f"Let $f(x) = {a}x^2 + {b}x + {c}$. Find $f({d})$.", str(a * d * d + b * d + c)
        elif k == 1:
            q, ans = (f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$ and express the answer as a common "
                      "fraction in lowest terms."), f"\\frac{{{a * d + b * c}}}{{{b * d}}}"
        elif k == 2:
            q, ans = f"If $\\sqrt{{x + {a}}} = {b}$, what is the value of $x$?", str(b * b - a)
        elif k == 3:
            q, ans = (f"Let $\\alpha$ and $\\beta$ be the roots of $x^2 - {a}x + {b} = 0$. Compute "
                      "$\\alpha^2 + \\beta^2$."), str(a * a - 2 * b)
        else:
            q, ans = (f"Evaluate the sum\n$$\\sum_{{k=1}}^{{{a}}} \\frac{{1}}{{k(k+1)}}.$$\nGive the answer in "
                      "lowest terms."), f"\\frac{{{a}}}{{{a + 1}}}"
        rows.append({"message": json.dumps([{"role": "user", "content": q}]), "answer": ans,
                     "datasource": "deepscaler_like", "difficulty": k})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------ splitting / LaTeX
def test_split_maths_delimiters_escapes_and_unclosed_dollars():
    segs = split_maths(r"A $x^2$ and $$\frac12$$ or \[y\] and \(z\), costs \$5; $5 and more")
    assert [(s.kind, s.body) for s in segs] == [
        ("text", "A "), ("inline", "x^2"), ("text", " and "), ("display", r"\frac12"), ("text", " or "),
        ("display", "y"), ("text", " and "), ("inline", "z"), ("text", ", costs $5; $5 and more")]
    assert segs[3].source == r"$$\frac12$$" and segs[5].source == r"\[y\]"


def test_normalize_latex_rewrites_to_mathtext_spellings():
    assert normalize_latex(r"\frac12 \le \sqrt2", display=False) == r"\frac{1}{2} \leq \sqrt{2}"
    assert normalize_latex(r"\tfrac{a}{b}", display=True) == r"\dfrac{a}{b}"
    # display style at the top level only: fractions in a fraction or an exponent stay small
    assert normalize_latex(r"\frac{\frac12}{e^{\frac{x}{2}}} + \{\frac12\}", display=True) == \
        r"\dfrac{\frac{1}{2}}{e^{\frac{x}{2}}} + \{\dfrac{1}{2}\}"
    assert normalize_latex(r"\frac1{x}\binom52 \sqrt[3]8", display=False) == r"\frac{1}{x}\binom{5}{2} \sqrt[3]{8}"
    assert normalize_latex(r"\displaystyle a \pmod{7}", display=False) == r"a \ (\mathrm{mod}\ 7)"
    assert normalize_latex("a\n+ b", display=False) == "a + b"  # newlines inside maths are spaces


def test_common_latex_typesets_without_fallback(renderer):
    text = (r"$\frac12 + \tfrac{a}{b} \le \sqrt[3]{x} \ge \binom{n}{k}$, $a \equiv 1 \pmod{4}$, "
            r"$x \in \{1, 2\}$, $\angle ABC = 90^\circ$, $\lvert z \rvert$, $\textbf{v} \cdot \vec{w}$, "
            r"$\alpha\beta\gamma\pi\theta \neq \infty$, $\displaystyle\sum_{i=1}^n i$, $p \implies q$, "
            r"$\lfloor x \rfloor$, $\overline{AB}$, $\log_2 8$, $\sin^2\theta$, $\text{cm}^2$")
    _, fallbacks = renderer.render(text)
    assert fallbacks == []


# ------------------------------------------------------------------------------------- the page
def test_different_problems_give_different_images_and_same_gives_same_bytes(renderer):
    from lmmr1.data.render import png_bytes

    a, _ = renderer.render("Find $x$ if $2x + 3 = 7$.")
    b, _ = renderer.render("Find $x$ if $2x + 5 = 7$.")
    assert a.size == b.size and not np.array_equal(ink(a), ink(b))
    again, _ = ProblemRenderer(RenderConfig()).render("Find $x$ if $2x + 3 = 7$.")  # a fresh renderer
    assert png_bytes(a) == png_bytes(again)
    assert a.mode == "L" and a.width == 768


def test_inked_area_grows_with_the_text_and_long_text_wraps(renderer):
    sentence = "The sum of two numbers is $12$ and their difference is $4$. "
    areas, heights = [], []
    for k in (1, 3, 9):
        img, _ = renderer.render(sentence * k)
        areas.append(int(ink(img).sum()))
        heights.append(img.height)
    assert areas[0] < areas[1] < areas[2]
    assert 2.5 < areas[1] / areas[0] < 3.5 and 8 < areas[2] / areas[0] < 10  # ink ~ proportional to text
    assert heights[0] < heights[2]  # nine sentences do not fit one line of 768 px: wrapped
    x0, _, w, _ = ink_box(renderer.render(sentence * 9)[0])
    assert x0 >= 16 and x0 + w <= 768 - 16  # inside the margins


def test_fraction_is_typeset_stacked_not_as_its_source(renderer):
    maths, fallbacks = renderer.render(r"$\frac{a}{b}$")
    source, _ = renderer.render(r"\$\frac{a}{b}\$")  # exactly what the fall-back would draw
    assert fallbacks == []
    _, _, mw, mh = ink_box(maths)
    _, _, sw, sh = ink_box(source)
    assert mw * 4 < sw  # one letter wide, not 13 characters
    assert mh > sh  # two levels stacked
    # a fraction bar: a row inked across the whole formula, blank rows just above and below it
    x0, y0, w, h = ink_box(maths)
    rows = ink(maths)[y0:y0 + h, x0:x0 + w].sum(axis=1)
    bar = [i for i in range(1, h - 1) if rows[i] >= 0.9 * w and rows[i - 1] == 0 and rows[i + 1] == 0]
    assert len(bar) == 1 and rows[:bar[0]].sum() > 0 and rows[bar[0] + 1:].sum() > 0
    assert not np.array_equal(ink(maths), ink(source))


def test_unrenderable_formula_is_drawn_as_its_source_and_reported(renderer):
    img, fallbacks = renderer.render(r"Prove $\boxed{a}$ now.")
    literal, none = renderer.render(r"Prove \$\boxed{a}\$ now.")
    assert none == [] and [f.formula for f in fallbacks] == [r"$\boxed{a}$"]
    assert "boxed" in fallbacks[0].reason
    assert np.array_equal(np.asarray(img), np.asarray(literal))  # drawn as its source text, not dropped


def test_display_maths_is_centred_on_its_own_line(renderer):
    img, _ = renderer.render(r"Evaluate $$\sum_{k=1}^{10} k^2$$ please.")
    plain, _ = renderer.render("Evaluate please.")
    a = ink(img)
    cols = np.nonzero(a.any(axis=0))[0]
    assert img.height > plain.height * 1.8  # three lines, the middle one tall
    # the formula's band is centred: its ink spans the middle of the page, not from the left margin
    rows = np.nonzero(a.any(axis=1))[0]
    mid = a[(rows.min() + rows.max()) // 2]
    xs = np.nonzero(mid)[0]
    assert abs((xs.min() + xs.max()) / 2 - 768 / 2) < 40 and xs.min() > 200 and cols.min() < 40


def test_bad_render_options_are_one_line_errors():
    with pytest.raises(LmmR1Error, match="--width"):
        ProblemRenderer(RenderConfig(width=60))
    with pytest.raises(LmmR1Error, match="positive"):
        ProblemRenderer(RenderConfig(font_size=0))


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LmmR1Error, match=r"pip install 'lmmr1\[render\]'"):
        ProblemRenderer()


# ------------------------------------------------------------------------------------ the rows
def test_rows_keep_system_turn_answer_and_fields(tmp_path):
    system = {"role": "system", "content": "Think step by step."}
    rows = [
        {"message": json.dumps([system, {"role": "user", "content": "What is $1+1$?"}]), "answer": "2",
         "datasource": "ds", "response": "<think>1+1</think><answer>2</answer>", "id": 7},
        {"message": [{"role": "user", "content": [{"type": "text", "text": "What is $2^3$?"}]}], "answer": 8},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out" / "rendered.jsonl"
    summary = render_dataset(src, out, instruction="Answer the question in the picture.")
    assert summary.rows == 2 and summary.fallbacks == [] and summary.skipped == []
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert isinstance(got[0]["message"], str) and isinstance(got[1]["message"], list)  # representation kept
    m0 = json.loads(got[0]["message"])
    assert m0[0] == system
    assert m0[1]["content"] == [{"type": "image", "image": "rendered_images/rendered_000001.png"},
                                {"type": "text", "text": "Answer the question in the picture."}]
    assert {k: v for k, v in got[0].items() if k != "message"} == {k: v for k, v in rows[0].items() if k != "message"}
    assert got[1]["answer"] == 8 and got[1]["message"][0]["content"][0]["image"] == "rendered_images/rendered_000002.png"
    assert (out.parent / "rendered_images" / "rendered_000002.png").is_file()

    # empty instruction: the image alone
    render_dataset(src, tmp_path / "bare.jsonl", instruction="", images_dir=tmp_path / "pngs")
    bare = json.loads(json.loads((tmp_path / "bare.jsonl").read_text().splitlines()[0])["message"])
    assert bare[1]["content"] == [{"type": "image", "image": "pngs/bare_000001.png"}]


def test_rendered_rows_load_in_the_training_reader_with_their_images(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", deepscaler_like(5))
    out = tmp_path / "elsewhere" / "img.jsonl"
    render_dataset(src, out)
    ds = PromptDataset.load(str(out), system_prompt="r1")
    assert len(ds) == 5 and [e.answer for e in ds] == [r["answer"] for r in deepscaler_like(5)]
    ex = ds[0]
    assert ex.has_images and ex.prompt_text() == DEFAULT_INSTRUCTION
    img = ex.images()[0]
    assert img.width == 768 and ink(img).sum() > 500
    assert ex.fields["difficulty"] == 0 and ex.datasource == "deepscaler_like"
    assert ex.messages[0]["role"] == "system"  # the reader adds r1 as for any row


def test_existing_images_stay_before_the_page(tmp_path):
    (tmp_path / "data").mkdir()
    fig = Image.new("RGB", (40, 30), (200, 10, 10))
    fig.save(tmp_path / "data" / "fig.png")
    row = {"message": json.dumps([{"role": "user", "content": [
        {"type": "image", "image": "fig.png"}, {"type": "text", "text": "In the figure, find $\\angle A$."}]}]),
        "answer": "30"}
    src = write_jsonl(tmp_path / "data" / "in.jsonl", [row])
    out = tmp_path / "out" / "r.jsonl"
    render_dataset(src, out)
    content = json.loads(json.loads(out.read_text())["message"])[0]["content"]
    assert [it["type"] for it in content] == ["image", "image", "text"]
    assert content[0]["image"] == "../data/fig.png"  # re-referenced from the output's folder
    ex = PromptDataset.load(str(out), system_prompt="none")[0]
    own, page = ex.images()
    assert own.size == (40, 30) and own.getpixel((0, 0)) == (200, 10, 10) and page.width == 768


def test_parquet_input_with_an_image_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (0, 0, 255)).save(buf, format="PNG")
    table = pa.table({
        "message": [json.dumps([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count $n$."}]}]),
                    json.dumps([{"role": "user", "content": "Solve $x+1=2$."}])],
        "answer": ["3", "1"],
        "images": [[buf.getvalue()], []],
    })
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out.jsonl"
    assert render_dataset(tmp_path / "in.parquet", out).rows == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all("images" not in r for r in rows)  # in-memory images became files
    c0 = json.loads(rows[0]["message"])[0]["content"]
    assert c0[0]["image"] == "out_images/out_000001_1.png" and c0[1]["image"] == "out_images/out_000001.png"
    ds = PromptDataset.load(str(out), system_prompt="none")
    assert ds[0].images()[0].getpixel((5, 5)) == (0, 0, 255) and len(ds[1].images()) == 1


def test_datasets_folder_with_a_pil_image_column_and_json_input(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "message": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Area of $\\triangle ABC$?"}]}]],
        "answer": ["6"], "images": [[Image.new("RGB", (24, 16), (0, 128, 0))]],
    }).cast_column("images", datasets.Sequence(datasets.Image()))
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "o.jsonl"
    assert render_dataset(tmp_path / "hf", out).rows == 1
    row = json.loads(out.read_text())
    assert isinstance(row["message"], list) and "images" not in row  # a list stays a list
    ex = PromptDataset.load(str(out), system_prompt="none")[0]
    own, page = ex.images()
    assert own.size == (24, 16) and own.getpixel((3, 3)) == (0, 128, 0) and page.width == 768

    (tmp_path / "rows.json").write_text(json.dumps({"data": deepscaler_like(2)}))
    assert render_dataset(tmp_path / "rows.json", tmp_path / "j.jsonl").rows == 2


def test_bad_rows_name_file_line_or_are_counted_with_skip_invalid(tmp_path):
    good = deepscaler_like(1)[0]
    rows = [good, "{not json", {"message": good["message"]},  # line 3: no answer
            {"message": json.dumps([{"role": "user", "content": [{"type": "text", "text": "  "}]}]), "answer": "1"},
            good]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{src}:2: invalid JSON"):
        render_dataset(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
    summary = render_dataset(src, tmp_path / "out.jsonl", skip_invalid=True)
    assert summary.rows == 2
    assert [w for w, _ in summary.skipped] == [f"{src}:2", f"{src}:3", f"{src}:4"]
    assert "answer" in summary.skipped[1][1] and "no text to render" in summary.skipped[2][1]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    with pytest.raises(LmmR1Error, match="is the input file"):
        render_dataset(src, src)


def test_unrenderable_formula_counted_with_location_and_strict_is_an_error(tmp_path):
    rows = deepscaler_like(3)
    rows[1]["message"] = json.dumps([{"role": "user", "content": r"Compute $\boxed{2}+\begin{cases}1\end{cases}$."}])
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = render_dataset(src, tmp_path / "out.jsonl")
    assert summary.rows == 3 and summary.fallback_rows == 1
    assert [(w, f.formula) for w, f in summary.fallbacks] == [(f"{src}:2", r"$\boxed{2}+\begin{cases}1\end{cases}$")]
    with pytest.raises(DataError, match=rf"^{src}:2: formula .*boxed.* cannot be typeset .*--strict"):
        render_dataset(src, tmp_path / "strict.jsonl", strict=True)


# --------------------------------------------------------------------------- end to end (CLI)
def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cli_renders_200_deepscaler_rows_in_parallel_deterministically_and_train_loads_them(tmp_path, tiny_vlm):
    rows = deepscaler_like(200)
    rows[17]["message"] = json.dumps([{"role": "user", "content": r"Find $\boxed{x}$ if $x + 1 = 3$."}])
    src = write_jsonl(tmp_path / "deepscaler.jsonl", rows)
    out = tmp_path / "cli" / "deepscaler_rendered.jsonl"
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "data", "render", str(src), "--out", str(out),
                          "--workers", "2", "--width", "640", "--font-size", "13", "--dpi", "110"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    err = " ".join(res.stderr.split())
    assert f"{src}:18: formula $\\boxed{{x}}$ cannot be typeset" in err
    assert "wrote 200 rows" in err and "1 formula(s) in 1 row(s) drawn as source text" in err
    got = out.read_text().splitlines()
    assert len(got) == 200 and [json.loads(x)["answer"] for x in got] == [r["answer"] for r in rows]

    # one worker in-process gives the same bytes (order and images do not depend on the workers)
    same = tmp_path / "lib" / "deepscaler_rendered.jsonl"
    render_dataset(src, same, RenderConfig(width=640, font_size=13, dpi=110), workers=1)
    assert same.read_text() == out.read_text()
    assert _digest(same.parent / "deepscaler_rendered_images") == _digest(out.parent / "deepscaler_rendered_images")
    n_problems = len({r["message"] for r in rows})  # the generator repeats a few problems
    assert 150 < n_problems == len(set(_digest(out.parent / "deepscaler_rendered_images").values()))

    # lmmr1 train loads the rendered file and trains a step on it
    recipe = tmp_path / "fre_multi_tiny.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{path: {tiny_vlm}}}\n"
                      f"data:\n  - {{path: {out}, system_prompt: none}}\n"
                      "reward: [{name: target_fraction, kwargs: {target: '7'}}]\n"
                      "rollout: {n: 2, max_new_tokens: 4}\n"
                      "train: {steps: 1, prompts_per_step: 2, micro_batch_size: 4, tensorboard: false, num_threads: 2}\n")
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "train", str(recipe)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]


def test_cli_bad_row_strict_skip_invalid_images_dir_instruction(tmp_path):
    boxed = {"message": json.dumps([{"role": "user", "content": r"Find $\boxed{x}$."}]), "answer": "1"}
    src = write_jsonl(tmp_path / "in.jsonl", [deepscaler_like(1)[0], {"answer": "1"}, boxed])

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "data", "render", str(src), "--workers", "1", *args],
                             capture_output=True, text=True, timeout=300)
        return res.returncode, [x for x in res.stderr.splitlines() if x.strip()]

    rc, lines = cli("--out", str(tmp_path / "o.jsonl"))
    assert rc == 2 and len(lines) == 1 and f"{src}:2" in lines[0] and "'message' is missing" in lines[0], lines
    assert not (tmp_path / "o.jsonl").exists()

    rc, lines = cli("--out", str(tmp_path / "o.jsonl"), "--skip-invalid", "--images-dir", str(tmp_path / "pngs"),
                    "--instruction", "Read the image, then answer.")
    assert rc == 0 and any(f"skipped {src}:2" in x for x in lines), lines
    assert "wrote 2 rows" in " ".join(lines) and "1 row(s) skipped" in " ".join(lines)
    row = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert json.loads(row["message"])[0]["content"] == [{"type": "image", "image": "pngs/o_000001.png"},
                                                         {"type": "text", "text": "Read the image, then answer."}]

    rc, lines = cli("--out", str(tmp_path / "s.jsonl"), "--skip-invalid", "--strict")
    assert rc == 0 and any(f"skipped {src}:3: formula $\\boxed{{x}}$ cannot be typeset" in x for x in lines), lines
    rc, lines = cli("--out", str(tmp_path / "s.jsonl"), "--strict", "--workers", "0")
    assert rc == 2 and len(lines) == 1 and f"{src}:2" in lines[0]
