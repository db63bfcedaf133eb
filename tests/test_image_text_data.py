"""ImageTextDataModule: preprocessing, tokenizer, entity texts, splits, and one-line DataErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _image_text_files import make_dataset
from PIL import Image
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.image_text.datamodule import ImageTextDataModule
from plexlab.datamodules.image_text.entities import caption_chunks
from plexlab.datamodules.image_text.images import CLIP_MEAN, CLIP_STD, load_image, normalize_images
from plexlab.datamodules.image_text.tokenizers import WordTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dm_for(root: Path, **kw: object) -> ImageTextDataModule:
    args = {
        "image_size": 16,
        "max_text_length": 12,
        "batch_size": 4,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
    }
    args.update(kw)
    return ImageTextDataModule(str(root), **args)  # type: ignore[arg-type]


def test_caption_chunks_are_noun_phrases() -> None:
    cap = "A child in a pink dress is climbing up a set of stairs in front of an entry way ."
    assert caption_chunks(cap) == ["a child", "a pink dress", "a set of stairs", "an entry way"]
    assert caption_chunks("A black dog and a tri-colored dog playing") == ["a black dog", "a tri-colored dog"]


def test_word_tokenizer_encodes_with_bos_eos_pad_unk(tmp_path: Path) -> None:
    tok = WordTokenizer.build(["a dog runs .", "a dog"])
    ids, mask = tok.encode(["a dog jumps", "a dog runs . a dog runs ."], max_length=6)
    a, dog = tok.stoi["a"], tok.stoi["dog"]
    assert ids[0].tolist() == [tok.bos_token_id, a, dog, tok.unk_token_id, tok.eos_token_id, tok.pad_token_id]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert ids[1, -1].item() == tok.eos_token_id and mask[1].sum() == 6  # truncated, still ends in <eos>
    assert tok.eos_token_id != 2  # CLIP's text model pools at the first <eos> only when eos id != 2
    tok.save(tmp_path / "vocab.json")
    assert WordTokenizer.load(tmp_path / "vocab.json").itos == tok.itos


def test_load_image_resize_crop_and_normalise(tmp_path: Path) -> None:
    img = np.zeros((30, 60, 3), dtype=np.uint8)
    img[:, 20:40] = 255  # white centre band, black sides: the centre crop keeps only white
    Image.fromarray(img).save(tmp_path / "x.png")
    arr = load_image(tmp_path / "x.png", 10)
    assert arr.shape == (3, 10, 10) and arr.dtype == np.uint8
    assert arr[:, :, 3:7].min() > 200
    x = normalize_images(torch.from_numpy(arr[None]))
    expected = (1.0 - CLIP_MEAN) / CLIP_STD
    assert np.allclose(x[0, :, 5, 5].numpy(), expected, atol=0.05)


def test_setup_batches_and_split_by_image(tmp_path: Path) -> None:
    dm = dm_for(make_dataset(tmp_path, n_images=12))
    dm.setup("fit")
    dm.setup("fit")  # idempotent
    splits = {k: set(v) for k, v in dm.splits.items()}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    assert sum(len(v) for v in splits.values()) == 12
    batch = next(iter(dm.val_dataloader()))
    assert batch.pixel_values.shape == (3, 3, 16, 16)
    assert batch.caption_ids.shape == (6, 12) and batch.caption_owner.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.entity_ids.shape == (3, 5, 12) and batch.entity_valid.shape == (3, 5)
    # default entities from chunks: "a red square number 0" is one chunk, the other entities are empty
    assert batch.entity_valid[:, 0].all() and not batch.entity_valid[:, 1:].any()
    kw = dm.model_kwargs()
    assert kw["vocab_size"] == len(dm.tokenizer) and kw["image_size"] == 16 and kw["num_entities"] == 5
    assert dm.sample_ids() == sorted(dm.sample_ids()) and len(dm.sample_ids()) == 12
    assert sum(len(b) for b in dm.predict_dataloader()) == 12


def test_tag_columns_split_column_and_caption_entities(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_images=8, tags=True, split=True)
    dm = dm_for(root)
    dm.setup("fit")
    assert dm.resolved_entity_source == "columns"
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [4, 2, 2]
    assert (
        dm.entity_texts[0][:2] == ["red thing", "brand0"] and dm.entity_texts[2][1] == ""
    )  # img01: no brand
    assert dm._entity_valid[0].tolist() == [True, True, False, False, False]
    dm2 = dm_for(root, entity_source="captions")
    dm2.setup("fit")
    assert dm2.entity_texts[0][0] == "A red square number 1 ."  # the image's other caption


def _one_line_error(dm: ImageTextDataModule) -> str:
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_non_image_file_is_one_line_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_images=8)
    (root / "images" / "img03.png").write_text("this is not an image")
    msg = _one_line_error(dm_for(root))
    assert "img03.png" in msg and "not a readable image" in msg


def test_missing_image_names_the_row(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_images=8)
    (root / "images" / "img05.png").unlink()
    msg = _one_line_error(dm_for(root))
    assert msg.startswith(str(root / "captions.csv")) and "row 11" in msg and "img05.png" in msg


def test_bad_csv_columns_and_rows(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_images=8)
    (root / "bad.csv").write_text("image,text\nimg00.png,a red square\n")
    msg = _one_line_error(dm_for(root, captions_file=str(root / "bad.csv")))
    assert "bad.csv" in msg and "'caption'" in msg
    (root / "empty_caption.csv").write_text("image,caption\nimg00.png,a red square\nimg01.png,\n")
    msg = _one_line_error(dm_for(root, captions_file=str(root / "empty_caption.csv")))
    assert "row 2" in msg
    (root / "split.csv").write_text("image,caption,split\nimg00.png,a,train\nimg00.png,b,val\n")
    msg = _one_line_error(dm_for(root, captions_file=str(root / "split.csv")))
    assert "two splits" in msg
    msg = _one_line_error(dm_for(root, entity_source="columns"))
    assert "tag column" in msg


def test_flickr_subset(shared_data: Path) -> None:
    dm = ImageTextDataModule(
        str(shared_data / "image_text" / "flickr8k_1k"), image_size=32, max_text_length=24, max_images=40
    )
    dm.setup("fit")
    assert len(dm.image_names) == 40 and len(dm.captions) == 200
    assert dm.resolved_entity_source == "chunks"
    assert dm._entity_valid[:, :2].float().mean() > 0.8  # most captions give at least two chunks
    train_names = {dm.image_names[i] for i in dm.splits["train"]}
    val_names = {dm.image_names[i] for i in dm.splits["val"]}
    assert train_names and val_names and not train_names & val_names
