"""A labelled image grid: one row per class, its name on the left."""
from PIL import Image, ImageDraw, ImageFont

PAD = 2


def labelled_grid(rows, background=(255, 255, 255), text_color=(0, 0, 0)):
    """rows: a list of (name, [PIL images of one size]) -> one PIL image."""
    if not rows or not all(images for _, images in rows):
        raise ValueError("a grid needs at least one row, each with at least one image")
    width, height = rows[0][1][0].size
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(measure.textbbox((0, 0), name, font=font)[2] for name, _ in rows) + 2 * PAD
    columns = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (text_width + columns * (width + PAD) + PAD, len(rows) * (height + PAD) + PAD), background)
    draw = ImageDraw.Draw(grid)
    for r, (name, images) in enumerate(rows):
        top = PAD + r * (height + PAD)
        box = draw.textbbox((0, 0), name, font=font)
        draw.text((PAD, top + (height - (box[3] - box[1])) // 2 - box[1]), name, fill=text_color, font=font)
        for c, image in enumerate(images):
            if image.size != (width, height):
                raise ValueError(f"grid images must share one size: {image.size} != {(width, height)}")
            grid.paste(image.convert("RGB"), (text_width + c * (width + PAD), top))
    return grid
