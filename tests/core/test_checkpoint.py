"""Checkpoints, backbone weight layouts, and the ``model info`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hyperct_core as hc
from agent.commands.model import format_info, model_info
from hyperct_core.backbone import BackboneConfig, create_backbone, hf_to_timm_state_dict
from hyperct_core.checkpoint import CARD_NAME, WEIGHTS_NAME
from hyperct_core.errors import CheckpointError
from tests.core.tiny_models import studies, tiny_config, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture()
def ckpt(model, tmp_path: Path) -> Path:
    hc.save_checkpoint(model, hc.make_card(model), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_round_trip_is_bit_exact(model, ckpt):
    loaded, card = hc.load_checkpoint(ckpt)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert card.to_dict() == json.loads((ckpt / CARD_NAME).read_text())
    assert card.tasks[0] == "reduced_rv_systolic_function" and len(card.tasks) == 25
    assert card.lora_rank == 16 and card.lora_scale == 0.5 and not card.validated
    assert card.preprocess_config().crop_size == 144
    batch = studies([2, 3])
    a = hc.load_predictor(ckpt, device="cpu", dtype="fp32").predict(batch)
    b = hc.Predictor(model, device="cpu", dtype="fp32").predict(batch)
    np.testing.assert_array_equal(a, b)


def _hf_state_dict(cfg: BackboneConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the key names of transformers' DINOv3ViTModel."""
    g = torch.Generator().manual_seed(seed)
    d, h = cfg.embed_dim, cfg.mlp_hidden

    def r(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "embeddings.cls_token": r(1, 1, d),
        "embeddings.mask_token": torch.zeros(1, 1, d),
        "embeddings.register_tokens": r(1, cfg.num_reg_tokens, d),
        "embeddings.patch_embeddings.weight": r(d, 3, cfg.patch_size, cfg.patch_size),
        "embeddings.patch_embeddings.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
    }
    for i in range(cfg.depth):
        p = f"layer.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(d),
                p + "norm1.bias": r(d),
                p + "attention.q_proj.weight": r(d, d),
                p + "attention.q_proj.bias": torch.zeros(d),  # zero in the ViT-B release
                p + "attention.k_proj.weight": r(d, d),
                p + "attention.v_proj.weight": r(d, d),
                p + "attention.v_proj.bias": torch.zeros(d),
                p + "attention.o_proj.weight": r(d, d),
                p + "attention.o_proj.bias": r(d),
                p + "layer_scale1.lambda1": 0.5 + r(d),
                p + "norm2.weight": 1 + r(d),
                p + "norm2.bias": r(d),
                p + "mlp.up_proj.weight": r(h, d),
                p + "mlp.up_proj.bias": r(h),
                p + "mlp.down_proj.weight": r(d, h),
                p + "mlp.down_proj.bias": r(d),
                p + "layer_scale2.lambda1": 0.5 + r(d),
            }
        )
    return sd


def _hf_reference_cls(sd: dict[str, torch.Tensor], cfg: BackboneConfig, x: torch.Tensor):
    """DINOv3 forward in the HF model's terms (RoPE from patch-centre coordinates)."""
    f = torch.nn.functional
    d, nh = cfg.embed_dim, cfg.num_heads
    hd = d // nh
    b = x.shape[0]
    pe = f.conv2d(
        x,
        sd["embeddings.patch_embeddings.weight"],
        sd["embeddings.patch_embeddings.bias"],
        stride=cfg.patch_size,
    )
    gh, gw = pe.shape[-2:]
    t = torch.cat(
        [
            sd["embeddings.cls_token"].expand(b, -1, -1),
            sd["embeddings.register_tokens"].expand(b, -1, -1),
            pe.flatten(2).transpose(1, 2),
        ],
        1,
    )
    inv_freq = 1 / 100.0 ** torch.arange(0, 1, 4 / hd)
    ch = torch.arange(0.5, gh) / gh * 2 - 1
    cw = torch.arange(0.5, gw) / gw * 2 - 1
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1)
    ang = (2 * math.pi * coords[:, :, None] * inv_freq[None, None]).flatten(1, 2).tile(2)
    cos, sin = ang.cos(), ang.sin()

    def rope(z: torch.Tensor) -> torch.Tensor:
        pre, pat = z[:, :, : -cos.shape[0]], z[:, :, -cos.shape[0] :]
        half = torch.cat([-pat[..., hd // 2 :], pat[..., : hd // 2]], -1)
        return torch.cat([pre, pat * cos + half * sin], 2)

    def ln(z: torch.Tensor, k: str) -> torch.Tensor:
        return f.layer_norm(z, (d,), sd[k + ".weight"], sd[k + ".bias"], eps=1e-5)

    for i in range(cfg.depth):
        p = f"layer.{i}."
        hs = ln(t, p + "norm1")

        def heads(k: str, hs: torch.Tensor = hs, p: str = p) -> torch.Tensor:
            y = f.linear(hs, sd[p + f"attention.{k}.weight"], sd.get(p + f"attention.{k}.bias"))
            return y.view(b, -1, nh, hd).transpose(1, 2)

        q, k, v = rope(heads("q_proj")), rope(heads("k_proj")), heads("v_proj")
        o = f.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, d)
        o = f.linear(o, sd[p + "attention.o_proj.weight"], sd[p + "attention.o_proj.bias"])
        t = t + o * sd[p + "layer_scale1.lambda1"]
        m = f.gelu(
            f.linear(ln(t, p + "norm2"), sd[p + "mlp.up_proj.weight"], sd[p + "mlp.up_proj.bias"])
        )
        m = f.linear(m, sd[p + "mlp.down_proj.weight"], sd[p + "mlp.down_proj.bias"])
        t = t + m * sd[p + "layer_scale2.lambda1"]
    return ln(t, "norm")[:, 0]


def test_hugging_face_layout_maps_onto_timm(tmp_path: Path):
    cfg = tiny_config(depth=3).backbone
    sd = _hf_state_dict(cfg)
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    bb = create_backbone(cfg, path)
    own = bb.state_dict()
    torch.testing.assert_close(
        own["blocks.1.attn.qkv.weight"],
        torch.cat([sd[f"layer.1.attention.{n}_proj.weight"] for n in "qkv"]),
        atol=0,
        rtol=0,
    )
    assert torch.equal(own["blocks.2.gamma_2"], sd["layer.2.layer_scale2.lambda1"])
    assert torch.equal(own["reg_token"], sd["embeddings.register_tokens"])
    x = studies([3])[0]
    with torch.no_grad():
        ours = bb.forward_features(x)[:, 0]
    torch.testing.assert_close(ours, _hf_reference_cls(sd, cfg, x), atol=1e-4, rtol=1e-4)
    # A wrapper prefix is accepted; timm layout round-trips through the same loader.
    save_file({"dinov3_vit." + k: v for k, v in sd.items()}, str(tmp_path / "p.safetensors"))
    save_file(own, str(tmp_path / "timm.safetensors"))
    for other in ("p.safetensors", "timm.safetensors"):
        again = create_backbone(cfg, tmp_path / other).state_dict()
        assert all(torch.equal(again[k], own[k]) for k in own)


def test_hugging_face_layout_refusals():
    cfg = tiny_config().backbone
    sd = _hf_state_dict(cfg)
    bad = dict(sd, **{"layer.0.attention.q_proj.bias": torch.ones(cfg.embed_dim)})
    with pytest.raises(CheckpointError, match="non-zero q bias"):
        hf_to_timm_state_dict(bad)
    mapped = hf_to_timm_state_dict(bad, qkv_bias=True)
    assert torch.equal(mapped["blocks.0.attn.q_bias"], torch.ones(cfg.embed_dim))
    gated = dict(sd, **{"layer.0.mlp.gate_proj.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unsupported key"):
        hf_to_timm_state_dict(gated)
    missing = {k: v for k, v in sd.items() if k != "layer.1.norm2.bias"}
    bb = create_backbone(cfg, random_init=True)
    from hyperct_core.backbone import load_backbone_weights

    with pytest.raises(CheckpointError, match="1 missing"):
        load_backbone_weights(bb, missing)
    with pytest.raises(CheckpointError, match="no backbone weights"):
        create_backbone(cfg)


def test_external_backbone_file(model, tmp_path: Path):
    cfg = model.config.backbone
    hf = _hf_state_dict(cfg, seed=4)
    save_file(hf, str(tmp_path / "dinov3.safetensors"))
    m = hc.build_model(model.config, backbone_weights=tmp_path / "dinov3.safetensors", seed=1)
    card = hc.save_checkpoint(
        m, hc.make_card(m), tmp_path / "ck", backbone_file="../dinov3.safetensors"
    )
    assert card.backbone["weights"] == "external" and len(card.backbone["sha256"]) == 64
    assert not any(
        k.startswith("backbone.") for k in load_file(str(tmp_path / "ck" / WEIGHTS_NAME))
    )
    loaded, _ = hc.load_checkpoint(tmp_path / "ck")
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # Moved file: the operator points at it; a different file is refused.
    (tmp_path / "dinov3.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        hc.load_checkpoint(tmp_path / "ck")
    hc.load_checkpoint(tmp_path / "ck", backbone_path=tmp_path / "moved.safetensors")
    save_file(_hf_state_dict(cfg, seed=5), str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not the one"):
        hc.load_checkpoint(tmp_path / "ck", backbone_path=tmp_path / "other.safetensors")


def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda c: (c / WEIGHTS_NAME).write_bytes((c / WEIGHTS_NAME).read_bytes()[:-999]),
            "truncated",
        ),
        (lambda c: _flip_last_byte(c / WEIGHTS_NAME), "corrupted"),
        (lambda c: save_file({"w": torch.zeros(2)}, str(c / WEIGHTS_NAME)), "not a HyperCT"),
        (
            lambda c: (c / WEIGHTS_NAME).write_bytes(b"PK\x03\x04 zip, not safetensors"),
            "unreadable",
        ),
        (lambda c: (c / CARD_NAME).write_text("{not json"), "unreadable model card"),
        (lambda c: (c / CARD_NAME).unlink(), "missing card.json"),
        (
            lambda c: (c / CARD_NAME).write_text(
                (c / CARD_NAME).read_text().replace('"version": "0.0.0"', '"version": "0.0.1"')
            ),
            "does not belong",
        ),
        (
            lambda c: (c / CARD_NAME).write_text(
                (c / CARD_NAME).read_text().replace('"rank": 16', '"rank": 8', 1)
            ),
            "lora block disagrees",
        ),
    ],
)
def test_damaged_checkpoints_are_refused(ckpt: Path, damage, message):
    damage(ckpt)
    with pytest.raises(CheckpointError, match=message) as info:
        hc.load_predictor(ckpt, device="cpu", dtype="fp32")
    assert "\n" not in str(info.value)


def test_card_from_a_different_architecture_is_refused(model, ckpt: Path, tmp_path: Path):
    other = tiny_model(seed=2, depth=3)
    hc.save_checkpoint(other, hc.make_card(other), tmp_path / "deeper")
    # Same-looking directory with the other model's card: hash ties them together.
    (ckpt / CARD_NAME).write_bytes((tmp_path / "deeper" / CARD_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="does not belong"):
        hc.load_checkpoint(ckpt)


def test_missing_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        hc.load_predictor(tmp_path / "nope")


def test_model_info_command(ckpt: Path, tmp_path: Path, capsys):
    from agent.cli import main

    info = model_info(ckpt)
    counts = info["parameters"]
    assert counts["trainable"] == counts["hypernet_total"] + counts["classifier"]
    assert counts["hypernet_total"] == sum(
        counts[k] for k in ("hypernet_task_embedding", "hypernet_trunk", "hypernet_heads")
    )
    text = format_info(info)
    assert "DEMO / NOT VALIDATED" in text and "lung_nodule" in text
    # A reduced test backbone is not called a ViT-B/16 in its card.
    assert "backbone: vit_base_patch16_dinov3 structure, reduced:" in text
    assert BackboneConfig().identity == "vit_base_patch16_dinov3"
    assert BackboneConfig(img_size=224).identity == "vit_base_patch16_dinov3"
    assert f"{counts['hypernet_heads']:,d}" in text
    assert "drift reference: none (drift is not available" in text
    assert main(["model", "info", str(ckpt)]) == 0
    assert "hypernetwork: heads" in capsys.readouterr().out
    (ckpt / WEIGHTS_NAME).write_bytes(b"garbage")
    assert main(["model", "info", str(ckpt)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperct-agent: error:") and "\n" not in err


def test_model_info_without_a_path_shows_what_serve_loads(tmp_path: Path, capsys):
    """The bundled demo model (no [model].checkpoint), its held-out figures and splits."""
    from agent.cli import main

    assert main(["model", "info"]) == 0
    out = capsys.readouterr().out
    assert "(bundled demo model)" in out and "hyperct-demo-phantoms" in out
    assert "thresholds from split 'val', figures from split 'test'" in out
    [row] = [ln for ln in out.splitlines() if ln.strip().startswith("pleural_effusion")]
    assert "NOT VALIDATED" not in row and "not evaluated" not in row
    [row] = [ln for ln in out.splitlines() if ln.strip().startswith("medical_material")]
    assert "none" in row and "NOT VALIDATED on split 'val'" in row
    # A configured checkpoint is what serve would load instead.
    config = tmp_path / "agent.toml"
    config.write_text(f'[model]\ncheckpoint = "{tmp_path / "nowhere"}"\n')
    assert main(["model", "info", "--config", str(config)]) == 2  # a configuration error
    assert "nowhere" in capsys.readouterr().err
