"""Renderers: the frames the image variants show.  Flat colours and simple shapes, because a tiny
VLM at a 112-pixel budget must tell a box from a goal from the player at a glance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from lmmr1.envs.sokoban import Level

WALL = (90, 60, 40)
FLOOR = (235, 225, 200)
GOAL = (220, 40, 40)
BOX = (230, 170, 40)
BOX_ON_GOAL = (60, 170, 60)
PLAYER = (40, 80, 220)


def render_sokoban(level: Level, tile: int = 16) -> Image.Image:
    """Top-down frame: walls brown, floor beige, goals red rings, boxes orange (green on a goal),
    the player a blue disc.  ``tile`` pixels per cell."""
    img = Image.new("RGB", (level.width * tile, level.height * tile), WALL)
    d = ImageDraw.Draw(img)
    m = max(1, tile // 8)
    for r in range(level.height):
        for c in range(level.width):
            p = (r, c)
            if level.is_wall(p):
                continue
            x0, y0, x1, y1 = c * tile, r * tile, (c + 1) * tile - 1, (r + 1) * tile - 1
            d.rectangle((x0, y0, x1, y1), fill=FLOOR)
            if p in level.goals:
                d.ellipse((x0 + m, y0 + m, x1 - m, y1 - m), outline=GOAL, width=max(1, tile // 6))
            if p in level.boxes:
                d.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=BOX_ON_GOAL if p in level.goals else BOX)
            elif p == level.player:
                d.ellipse((x0 + 2 * m, y0 + 2 * m, x1 - 2 * m, y1 - 2 * m), fill=PLAYER)
    return img


GRASS = (60, 140, 60)
LINE = (235, 235, 235)
ATTACKER = (40, 80, 220)
DEFENDER = (220, 40, 40)
KEEPER = (240, 200, 40)
BALL = (255, 255, 255)


def render_football(attackers, carrier: int, defenders, keeper, width: int = 168) -> Image.Image:
    """Top-down pitch (x -1..1 left to right, y -0.42..0.42 top to bottom): attackers blue (the
    carrier ringed white, with the ball), defenders red, keeper yellow, the goal on the right."""
    height = max(8, round(width * 0.42))
    img = Image.new("RGB", (width, height), GRASS)
    d = ImageDraw.Draw(img)

    def px(p):
        return ((p[0] + 1) / 2 * (width - 1), (p[1] + 0.42) / 0.84 * (height - 1))

    cx = (width - 1) / 2
    d.line((cx, 0, cx, height - 1), fill=LINE)
    d.rectangle((0, 0, width - 1, height - 1), outline=LINE)
    g0, g1 = px((1.0, -0.1)), px((1.0, 0.1))
    d.line((g0[0] - 1, g0[1], g1[0] - 1, g1[1]), fill=BALL, width=3)
    r = max(2, width // 60)
    for i, p in enumerate(attackers):
        x, y = px(p)
        d.ellipse((x - r, y - r, x + r, y + r), fill=ATTACKER, outline=BALL if i == carrier else None)
    for p in defenders:
        x, y = px(p)
        d.ellipse((x - r, y - r, x + r, y + r), fill=DEFENDER)
    x, y = px(keeper)
    d.ellipse((x - r, y - r, x + r, y + r), fill=KEEPER)
    bx, by = px(attackers[carrier])
    b = max(1, r // 2)
    d.ellipse((bx + r - b, by + r - b, bx + r + b, by + r + b), fill=BALL)
    return img
