"""Message text for the image-text readers' one-line DataErrors."""


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())
