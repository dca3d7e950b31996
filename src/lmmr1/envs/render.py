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
