"""Pretrained weights by name, loaded safely: fair-esm's ESM-2 through the torch hub cache.

Every test writes a small random ESM-2 in fair-esm's hub checkpoint layout ({"model": state dict with
fair-esm's `encoder.sentence_encoder.` prefixes, "cfg": {"model": Namespace(...)}, "args": Namespace(...)},
the contact regression in `<name>-contact-regression.pt`) into a private torch hub folder (TORCH_HOME), under
a real fair-esm name whose architecture (2 x 32) differs from the real model's: the architecture is read
from the checkpoint. Nothing downloads: HF_HUB_OFFLINE=1, or torch.hub's downloader replaced by a fake.
"""

from __future__ import annotations

import argparse
import csv
import json
import urllib.error
from pathlib import Path

import esm
import pytest
import torch
import yaml
from plexlab import cli
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.protein.datamodule import esm_alphabet
from plexlab.modules.protein import esm_weights
from plexlab.modules.protein.encoders import SequenceEncoder
from plexlab.modules.protein.mmcl import ProteinMMCL

NAME = "esm2_t6_8M_UR50D"  # a real name; the file holds a 2 x 32 model, so the shape must come from the file
LAYERS, DIM, HEADS = 2, 32, 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_esm2(seed: int = 0) -> esm.model.esm2.ESM2:
    torch.manual_seed(seed)
    return esm.model.esm2.ESM2(
        num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS, alphabet=esm_alphabet()
    ).eval()


def fair_esm_checkpoint(model: esm.model.esm2.ESM2) -> tuple[dict, dict]:
    """(model data, regression data) as fair-esm publishes ESM-2: the layout its core loader reads."""
    state = model.state_dict()
    regression = {k: v for k, v in state.items() if k.startswith("contact_head.regression.")}
    prefixed = {
        (f"encoder.{k}" if k.startswith("lm_head.") else f"encoder.sentence_encoder.{k}"): v
        for k, v in state.items()
        if k not in regression
    }
    cfg = argparse.Namespace(
        encoder_layers=LAYERS, encoder_embed_dim=DIM, encoder_attention_heads=HEADS, token_dropout=True
    )
    return {"model": prefixed, "cfg": {"model": cfg}, "args": argparse.Namespace(arch="ESM-2")}, {
        "model": regression
    }


def write_checkpoint(folder: Path, name: str, model: esm.model.esm2.ESM2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data, regression = fair_esm_checkpoint(model)
    torch.save(data, folder / f"{name}.pt")
    torch.save(regression, folder / f"{name}-contact-regression.pt")
    return folder / f"{name}.pt"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private torch hub cache, offline; the fair-esm hub folder is TORCH_HOME/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _tokens(seqs: list[str]) -> torch.Tensor:
    return esm_alphabet().get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])[2]


def test_esm_by_name_from_the_torch_hub_cache_is_the_checkpoints_model(torch_home: Path) -> None:
    assert esm_weights.hub_checkpoint(NAME) == torch_home / f"{NAME}.pt"  # fair-esm's place, under TORCH_HOME
    reference = tiny_esm2()
    write_checkpoint(torch_home, NAME, reference)
    enc = SequenceEncoder(esm_model=NAME, use_sdpa=False).eval()
    assert (enc.dim, len(enc.esm.layers), enc.esm.attention_heads) == (DIM, LAYERS, HEADS)
    assert torch.equal(enc.esm.embed_tokens.weight, reference.embed_tokens.weight)
    tokens = _tokens(["MKTAYIAKQR", "GGW"])
    with torch.no_grad():
        tok, _ = enc(tokens)
        expected = reference(tokens, repr_layers=[LAYERS])["representations"][LAYERS]
    assert torch.allclose(tok, expected, atol=1e-5)


def test_our_download_url_and_folder_are_fair_esms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fair-esm builds its URLs inline; the one plexlab downloads from must be the same."""
    seen: list[str] = []
    monkeypatch.setattr(esm.pretrained, "load_hub_workaround", lambda url: seen.append(url) or {})
    esm.pretrained._download_model_and_regression_data(NAME)
    assert seen == [
        esm_weights.MODEL_URL.format(name=NAME),
        esm_weights.REGRESSION_URL.format(name=NAME),
    ]


def test_a_missing_model_is_downloaded_into_the_hub_folder(
    torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    served = write_checkpoint(tmp_path / "server", NAME, tiny_esm2())
    fetched: list[tuple[str, str]] = []

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        fetched.append((url, dst))
        Path(dst).write_bytes((served.parent / Path(url).name).read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    enc = SequenceEncoder(esm_model=NAME)
    assert enc.dim == DIM
    assert [d for _, d in fetched] == [
        str(torch_home / f"{NAME}.pt"),
        str(torch_home / f"{NAME}-contact-regression.pt"),
    ]
    SequenceEncoder(esm_model=NAME)  # cached now: no second download
    assert len(fetched) == 2


def test_offline_and_absent_names_the_model_file_and_folder(torch_home: Path) -> None:
    with pytest.raises(DataError) as err:
        SequenceEncoder(esm_model=NAME)
    message = str(err.value)
    assert err.value.source == "model.esm_model"
    assert f"{NAME}.pt" in message and str(torch_home) in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


def test_a_failed_download_is_one_line_with_the_reason(torch_home: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(
        DataError, match=r"cannot be downloaded \(.*name resolution.*\): put esm2_t6_8M_UR50D"
    ):
        SequenceEncoder(esm_model=NAME)
    assert not (torch_home / f"{NAME}.pt").exists()


class _Payload:
    """Unpickling this runs `Path.write_text(marker, "ran")`: any callable a pickle names would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.write_text, (self.marker, "ran"))


def test_a_checkpoint_that_would_run_code_is_refused(torch_home: Path, tmp_path: Path) -> None:
    data, _ = fair_esm_checkpoint(tiny_esm2())
    marker = tmp_path / "code_ran"
    data["args"] = _Payload(marker)
    torch_home.mkdir(parents=True)
    torch.save(data, torch_home / f"{NAME}.pt")
    with pytest.raises(DataError, match=r"refused by weights_only loading \(Unsupported global: GLOBAL"):
        SequenceEncoder(esm_model=NAME)
    assert not marker.exists()
    local = tmp_path / "local" / "mine.pt"
    local.parent.mkdir()
    torch.save(data, local)
    with pytest.raises(DataError, match=r"mine\.pt: refused by weights_only"):
        SequenceEncoder(esm_path=str(local))
    assert not marker.exists()
    # The same file through fair-esm's own hub loader runs the payload: why plexlab reads the file itself.
    with pytest.raises(Exception):  # noqa: B017 - the payload returns a number, not a Namespace
        esm.pretrained.load_model_and_alphabet(NAME)
    assert marker.read_text() == "ran"


def test_a_local_file_of_any_name_loads_without_its_regression_file(tmp_path: Path) -> None:
    reference = tiny_esm2(seed=1)
    path = write_checkpoint(tmp_path, "finetuned", reference)
    path.with_name("finetuned-contact-regression.pt").unlink()
    enc = SequenceEncoder(esm_path=str(path))
    assert torch.equal(enc.esm.layers[1].fc1.weight, reference.layers[1].fc1.weight)


def test_architecture_given_beside_weights_must_agree(torch_home: Path) -> None:
    write_checkpoint(torch_home, NAME, tiny_esm2())
    with pytest.raises(DataError, match=r"is 33 but the weights .* have 2") as err:
        SequenceEncoder(esm_model=NAME, num_layers=33)
    assert err.value.source == "model.esm_layers"
    assert SequenceEncoder(esm_model=NAME, num_layers=LAYERS, embed_dim=DIM).dim == DIM


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"esm_model": "esm1b_t33_650M_UR50S"}, "not an ESM-2 model of fair-esm; one of esm2_t6_8M_UR50D"),
        ({"esm_model": "weights/esm2.pt"}, "looks like a file: give a local checkpoint as model.esm_path"),
        ({"esm_model": NAME, "esm_path": "x.pt"}, "give the weights once"),
        ({"esm_path": "nowhere.pt"}, "nowhere.pt: no such ESM checkpoint file"),
    ],
)
def test_bad_weight_settings_are_one_line(kwargs: dict, needle: str, torch_home: Path) -> None:
    with pytest.raises(DataError, match=needle):
        SequenceEncoder(**kwargs)


def test_random_esm_keeps_the_650m_shape_by_default() -> None:
    enc = SequenceEncoder(num_layers=1)  # dim and heads default to ESM-2 650M's
    assert (enc.dim, enc.esm.attention_heads) == (1280, 20)


# ------------------------------------------------------------------ through the runner


def _fasta(folder: Path) -> Path:
    f = folder / "seqs.fasta"
    f.write_text(">A\nMKTAYIAKQRQISFVKSHFSRQ\n>B\nGGWACKLMVV\n")
    return f


def test_cli_offline_without_the_weights_is_one_line_exit_2(torch_home: Path, workdir: Path, capsys) -> None:
    exp = workdir / "exp.yaml"
    config = {
        "name": "weights",
        "model": {"name": "protein_mmcl", "esm_model": NAME, "gnn_dims": [8]},
        "data": {
            "name": "protein",
            "fasta_file": str(_fasta(workdir)),
            "cache_dir": str(workdir / "c"),
            "val_fraction": 0.0,
            "test_fraction": 0.0,
        },
        "trainer": {"max_epochs": 1},
    }
    exp.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    status = cli.main(["fit", str(exp)])
    # Progress and library log lines may come first (a full run's log handlers); the error is one last line.
    printed = capsys.readouterr().err.strip().splitlines()
    lines = [x for x in printed if x.startswith("plexlab: error:")]
    assert status == 2 and len(lines) == 1 and printed[-1] == lines[0], printed
    assert not any("Traceback" in x for x in printed), printed
    assert lines[0].startswith(f"plexlab: error: {exp}: model.esm_model: {NAME} is not in the torch hub")
    assert f"{NAME}.pt" in lines[0] and str(torch_home) in lines[0]
    if (workdir / "mlflow.db").exists():  # no run left RUNNING
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert all(r.info.status != "RUNNING" for r in runs)


def test_protein_mmcl_fits_from_weights_named_in_the_experiment_file(
    torch_home: Path, workdir: Path, shared_data: Path
) -> None:
    """`plexlab fit` with MLflow on: the ESM weights come from the hub cache by name, then train."""
    from _protein_files import SMALL
    from mlflow.tracking import MlflowClient

    reference = tiny_esm2()
    write_checkpoint(torch_home, NAME, reference)
    proteins = shared_data / "proteins"
    rows = [
        r
        for r in csv.DictReader(open(proteins / "chains.tsv"), delimiter="\t")
        if Path(r["file"]).name in SMALL[:8]
    ]
    chains = workdir / "chains.tsv"
    chains.write_text("file\tchain\n" + "".join(f"{r['file']}\t{r['chain']}\n" for r in rows))
    root = Path(__file__).resolve().parents[1]
    overrides = {
        "model.esm_model": NAME,
        "model.esm_layers": None,  # the experiment file gives the 650M shape; the checkpoint's is 2 x 32
        "model.esm_dim": None,
        "model.esm_heads": None,
        "model.gnn_dims": [16],
        "model.proj_dim": 8,
        "data.path": str(proteins),
        "data.chains_file": str(chains),
        "data.scop2_dir": str(proteins / "scop2"),
        "data.cache_dir": str(workdir / "graphs"),
        "data.max_residues": 120,
        "data.views": ["crop"],
        "data.crop_length": 30,
        "data.batch_size": 4,
        "data.val_fraction": 0.25,
        "data.test_fraction": 0.2,  # a fit tests its best epoch: a test split is needed
        "trainer.max_epochs": 1,
    }
    argv = ["fit", str(root / "sweeps" / "protein_mmcl_pretrain.yaml")]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert cli.main(argv) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.esm_model"] == NAME
    assert "train/loss" in run.data.metrics and "val/loss" in run.data.metrics


def test_model_settings_reach_the_encoder(torch_home: Path) -> None:
    write_checkpoint(torch_home, NAME, tiny_esm2())
    model = ProteinMMCL(esm_model=NAME, gnn_dims=[8], esm_freeze="all")
    assert model.encoder.seq.dim == DIM and not any(p.requires_grad for p in model.encoder.seq.parameters())


# ------------------------------------------------------------------ E2's CLIP through transformers' cache

CLIP_NAME = "openai/clip-vit-base-patch32"  # a real name; the cached folder holds a tiny random CLIP
CLIP_SIZES = {
    "vision_width": 32,
    "vision_layers": 4,
    "vision_heads": 4,
    "patch_size": 8,
    "text_width": 32,
    "text_layers": 2,
    "text_heads": 4,
    "projection_dim": 16,
}
TOKENS = {"vocab_size": 64, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "max_text_length": 16}


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, offline Hugging Face cache. huggingface_hub reads HF_HOME once, at import, so the test sets
    both the variable (for what a user does) and the cache folder it derived (for this process)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def cache_clip(hub: Path, name: str = CLIP_NAME):
    """A tiny random CLIP saved where `hf download NAME` puts a model: models--org--name/snapshots/<rev>."""
    from plexlab.modules.e2 import random_clip

    torch.manual_seed(0)
    clip = random_clip(**TOKENS, image_size=32, **CLIP_SIZES)
    repo = hub / f"models--{name.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    clip.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return clip


def test_clip_by_name_from_the_hugging_face_cache(hf_home: Path) -> None:
    from plexlab.modules.e2 import E2

    saved = cache_clip(hf_home)
    model = E2(**TOKENS, image_size=32, clip_model=CLIP_NAME)
    assert model.clip.config.vision_config.hidden_size == 32  # the cached model's sizes, not ViT-B/32's
    assert torch.equal(model.clip.visual_projection.weight, saved.visual_projection.weight)
    assert torch.equal(model.region_projs[0].weight, saved.visual_projection.weight)


def test_clip_offline_and_absent_names_the_model_and_the_cache(hf_home: Path) -> None:
    from plexlab.modules.e2 import E2

    with pytest.raises(DataError) as err:
        E2(**TOKENS, image_size=32, clip_model=CLIP_NAME)
    message = str(err.value)
    assert err.value.source == "model.clip_model" and "\n" not in message
    assert CLIP_NAME in message and str(hf_home) in message and "HF_HUB_OFFLINE" in message


def test_unreachable_hub_falls_back_to_the_cache(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    from plexlab.modules.e2 import E2
    from transformers import CLIPModel

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case the shell had it set at import
    real = CLIPModel.from_pretrained.__func__
    asked: list[bool] = []

    def no_hub(cls, name, *args, local_files_only: bool = False, **kwargs):
        asked.append(local_files_only)
        if not local_files_only:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(cls, name, *args, local_files_only=True, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(no_hub))
    saved = cache_clip(hf_home)
    model = E2(**TOKENS, image_size=32, clip_model=CLIP_NAME)
    assert asked == [False, True]
    assert torch.equal(model.clip.text_projection.weight, saved.text_projection.weight)
    with pytest.raises(DataError, match=r"the hub could not serve it \(We couldn't connect"):
        E2(**TOKENS, image_size=32, clip_model="openai/not-cached")


def test_clip_weights_given_twice_or_not_fitting_the_data(hf_home: Path, tmp_path: Path) -> None:
    from plexlab.modules.e2 import E2

    cache_clip(hf_home)
    with pytest.raises(DataError, match="give the weights once"):
        E2(**TOKENS, image_size=32, clip_model=CLIP_NAME, clip_path=str(tmp_path))
    with pytest.raises(DataError, match="is 64 but the CLIP model's is 32") as err:
        E2(**TOKENS, image_size=64, clip_model=CLIP_NAME)
    assert err.value.source == "data.image_size"
    with pytest.raises(DataError, match="no such local CLIP model folder"):
        E2(**TOKENS, image_size=32, clip_path=str(tmp_path / "nowhere"))


def test_e2_fits_from_a_clip_named_in_the_experiment_file(hf_home: Path, workdir: Path) -> None:
    """`plexlab fit` with MLflow on and the hub offline: CLIP comes from the cache by name, then trains."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    cache_clip(hf_home)
    data = workdir / "pairs"
    (data / "images").mkdir(parents=True)
    rows = ["image,caption"]
    for i, (name, rgb) in enumerate([("red", (220, 20, 20)), ("blue", (20, 20, 220))] * 4):
        Image.new("RGB", (32, 32), rgb).save(data / "images" / f"{i}.png")
        rows.append(f"{i}.png,a {name} square in a {name} box")
    (data / "captions.csv").write_text("\n".join(rows) + "\n")
    exp = workdir / "e2.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "e2-named-clip",
                "model": {"name": "e2", "clip_model": CLIP_NAME},
                "data": {
                    "name": "image_text",
                    "path": str(data),
                    "image_size": 32,
                    "max_text_length": 16,
                    "val_fraction": 0.25,
                    "test_fraction": 0.0,
                    "batch_size": 4,
                },
                "trainer": {"max_epochs": 1, "accelerator": "cpu"},
            }
        )
    )
    assert cli.main(["fit", str(exp)]) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["model.clip_model"] == CLIP_NAME
    assert "val/r_mean" in run.data.metrics
