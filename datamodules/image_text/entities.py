"""Entity texts for E2's regional loss: the tag columns, noun-phrase-like chunks of the caption, or the other
captions of the same image (see the data module's docstring)."""

from __future__ import annotations

from plexlab.datamodules.errors import DataError
from plexlab.datamodules.image_text.captions import ENTITIES, CaptionTable
from plexlab.datamodules.image_text.tokenizers import words

# Words that end a noun-phrase-like chunk (they are dropped): prepositions, conjunctions, auxiliaries and
# frequent verbs. "of" is kept inside chunks ("a set of stairs"). Any word ending in "ing" also ends a chunk.
_CHUNK_BREAKS = frozenset(
    """in on at with into onto through near by under over while and or but is are was were be being been
    has have had to from for up down out off across along around behind above below beside next past
    toward towards against as that who which where when then there their his her its they he she it
    front one two three four five several some stands sits runs jumps walks looks plays holds wears
    rides""".split()
)
# Nouns ending in "ing" that must not end a chunk.
_ING_NOUNS = frozenset(
    """building buildings clothing ceiling painting paintings swing swings spring string morning evening
    something nothing everything thing things wedding railing railings stocking pudding sibling siblings
    awning ring rings wing wings king ceiling ceilings stuffing frosting icing""".split()
)


def caption_chunks(caption: str) -> list[str]:
    """Noun-phrase-like chunks of a caption (see the module docstring); punctuation is dropped."""
    chunks: list[str] = []
    current: list[str] = []
    for word in words(caption):
        verb_ing = word.endswith("ing") and len(word) > 4 and word not in _ING_NOUNS
        is_break = word in _CHUNK_BREAKS or verb_ing or not word[0].isalnum()
        if is_break:
            if current:
                chunks.append(" ".join(current))
            current = []
        elif current or word != "of":  # "in front of a tree" -> "a tree"
            current.append(word)
    if current:
        chunks.append(" ".join(current))
    # A chunk that is only a determiner says nothing.
    return [c for c in chunks if c not in {"a", "an", "the"}]


def resolve_source(source: str, table: CaptionTable) -> str:
    """`source` with "auto" resolved: the tag columns when the CSV has any, else caption chunks."""
    if source == "auto":
        source = "columns" if table.tag_columns else "chunks"
    if source == "columns" and not table.tag_columns:
        raise DataError(
            table.source, f"entity_source 'columns' needs at least one tag column ({', '.join(ENTITIES)})"
        )
    return source


def entity_texts(table: CaptionTable, source: str) -> list[list[str]]:
    """`len(ENTITIES)` entity texts per caption row from a resolved `source`; "" where there is none."""
    out: list[list[str]] = []
    for r, row in enumerate(table.rows):
        if source == "columns":
            texts = [row.get(e, "") for e in ENTITIES]
        elif source == "chunks":
            texts = caption_chunks(row["caption"])[: len(ENTITIES)]
        else:  # the other captions of the same image
            texts = [table.rows[o]["caption"] for o in table.rows_of_image[table.image_of_row[r]] if o != r]
            texts = texts[: len(ENTITIES)]
        out.append(texts + [""] * (len(ENTITIES) - len(texts)))
    return out
