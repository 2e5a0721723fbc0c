"""Which weights a pipeline runs: checkpoint files, the bundled demo model, or a released architecture
with random weights — for both families.

One description serves every consumer, so that they cannot disagree: the export key (``source``),
the torch loader (``load``), reports (``label``) and the sampling defaults that go with the weights
(official checkpoints sample at the official settings, the demo model at the ones its figures were
measured at). ``check`` is the cheap part of loading (files exist and are files), done before any
expensive work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

#: the official VAR sampler's settings (var-spec.md §4)
OFFICIAL_SAMPLING = {"cfg": 4.0, "top_k": 900, "top_p": 0.95}
#: ``tools/run_infinity.py``'s defaults (the official ``scripts/infer.sh`` uses cfg 4, tau 0.5)
INFINITY_SAMPLING = {"cfg": 3.0, "tau": 1.0, "top_k": 900, "top_p": 0.97}
FAMILIES = ("var", "infinity")


class WeightsError(ValueError):
    """Weights that cannot be used as given: the message names the file and the fix."""


@dataclass(frozen=True)
class Weights:
    family: str = "var"  # "var" (class-conditional) or "infinity" (text-to-image)
    checkpoint: Path | None = None  # VAR: var_d16.pth ...; Infinity: infinity_2b_reg.pth or the 8B shard folder
    vae: Path | None = None
    text_encoder: Path | None = None  # Infinity: the flan-t5-xl folder (its tokenizer is always needed)
    random: str | None = None  # a released architecture with random weights (smoke runs; images are noise)
    seed: int = 0  # seed of the random weights
    demo: bool = False  # the bundled demo model

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def demo_model(cls) -> Weights:
        from varrt.runtime.demo import demo_model

        d = demo_model()
        return cls("var", d.var, d.vqvae, demo=True)

    @classmethod
    def files(cls, checkpoint: str | Path, vae: str | Path, text_encoder: str | Path | None = None) -> Weights:
        """Checkpoint files; a text encoder folder makes them an Infinity model."""
        family = "infinity" if text_encoder is not None else "var"
        te = Path(text_encoder) if text_encoder is not None else None
        return cls(family, Path(checkpoint), Path(vae), te)

    @classmethod
    def random_weights(cls, model: str, seed: int = 0, text_encoder: str | Path | None = None) -> Weights:
        family = "infinity" if model.startswith("infinity") else "var"
        return cls(family, text_encoder=Path(text_encoder) if text_encoder else None, random=model, seed=seed)

    @classmethod
    def of_source(cls, source: dict, family: str = "var") -> Weights | None:
        """The weights an artifact was exported from (its manifest's ``source``), if they are still
        here (the demo model is recognised by content); None when the files are gone."""
        if "random_weights" in source:
            rw = source["random_weights"]
            te = source.get("text_encoder", {}).get("path")
            return cls(family, text_encoder=Path(te) if te else None, random=rw.get("model"), seed=rw.get("seed", 0))
        main_key = "infinity" if family == "infinity" else "var"
        if main_key not in source:
            return None
        if family == "var" and source["var"].get("sha256") == _demo_sha256():
            return cls.demo_model()
        paths = [Path(source[k]["path"]) for k in (main_key, "vae")]
        if not all(p.exists() for p in paths):
            return None
        te = source.get("text_encoder", {}).get("path")
        return cls(family, paths[0], paths[1], Path(te) if te else None)

    # ------------------------------------------------------------------------------- what they are
    @property
    def label(self) -> str:
        """What the weights are, for reports (figures from random weights must say so)."""
        if self.random:
            return f"random ({self.random})"
        if self.demo:
            return "demo model (trained on colour emoji)"
        return f"checkpoint {self.checkpoint.name}" if self.checkpoint else "unknown"

    @property
    def sampling_defaults(self) -> dict:
        """The settings the weights are meant to be sampled at (the demo model's own, else official)."""
        if self.family == "infinity":
            return dict(INFINITY_SAMPLING)
        if self.demo:
            from varrt.runtime.demo import demo_model

            return {**OFFICIAL_SAMPLING, **demo_model().sampling}
        return dict(OFFICIAL_SAMPLING)

    @property
    def sampling_origin(self) -> str:
        if self.family == "infinity":
            return "tools/run_infinity.py's defaults"
        return "the demo model's own" if self.demo else "the official sampler's"

    def known_config(self):
        """The VAR architecture when it is known without a real checkpoint to read: a released
        name with random weights, or the demo model (a few MB); None otherwise."""
        if self.family != "var":
            return None
        if self.random:
            from varrt.export.configs import var_config

            return var_config(self.random)
        if self.demo:
            from varrt.export.checkpoint import load_var

            return load_var(self.checkpoint).cfg
        return None

    def check(self) -> Weights:
        """The cheap checks: every file is where it is said to be and of the right kind."""
        if self.family not in FAMILIES:
            raise WeightsError(f"unknown model family {self.family!r}; families: {', '.join(FAMILIES)}")
        if self.family == "infinity" and self.text_encoder is None:
            raise WeightsError("Infinity needs its text encoder: the flan-t5-xl folder (weights and tokenizer)")
        if self.text_encoder is not None and not self.text_encoder.is_dir():
            what = "is a file" if self.text_encoder.exists() else "not found"
            raise WeightsError(f"text encoder folder {self.text_encoder}: {what}; pass the flan-t5-xl folder")
        if self.random:
            return self
        if self.checkpoint is None or self.vae is None:
            raise WeightsError("give both the checkpoint and the VAE (or neither, for the bundled demo model)")
        for what, p in (("checkpoint", self.checkpoint), ("VAE", self.vae)):
            if not p.exists():
                raise WeightsError(f"{what} not found: {p}")
            sharded = what == "checkpoint" and self.family == "infinity"  # Infinity-8B: a folder of shards
            if p.is_dir() and not sharded:
                raise WeightsError(f"{what} {p} is a directory; pass the {what} file itself (.pth or .safetensors)")
        return self

    def source(self) -> dict:
        """What an export of these weights depends on (contents, not paths; see the export key)."""
        from varrt.runtime.artifacts import checkpoint_source, random_source
        from varrt.runtime.infinity_artifacts import infinity_source

        self.check()
        if self.family == "var":
            if self.random:
                return random_source(self.random, self.seed)
            return checkpoint_source(self.checkpoint, self.vae)
        if self.random:
            te = infinity_source(self.text_encoder, self.text_encoder, self.text_encoder)["text_encoder"]
            return {"random_weights": {"model": self.random, "seed": self.seed}, "text_encoder": te}
        return infinity_source(self.checkpoint, self.vae, self.text_encoder)

    # ------------------------------------------------------------------------------- loading
    def load(self) -> tuple:
        """The torch modules: (VAR, VQVAE) or (Infinity, BSQ VAE, text encoder)."""
        self.check()
        if self.family == "var":
            from varrt.export.checkpoint import load_models, random_models

            return random_models(self.random, seed=self.seed) if self.random else load_models(self.checkpoint, self.vae)
        return self._load_infinity()

    def _load_infinity(self) -> tuple:
        from varrt.export.bsq_vae import BSQVAE
        from varrt.export.infinity import Infinity
        from varrt.export.infinity_checkpoint import load_bsq_vae, load_infinity
        from varrt.export.infinity_config import BSQ_VAE_CONFIGS, INFINITY_CONFIGS
        from varrt.export.text_encoder import load_text_encoder

        text_encoder = load_text_encoder(self.text_encoder)
        if self.random:
            if self.random not in INFINITY_CONFIGS:
                raise WeightsError(f"model {self.random!r}: Infinity sizes are {sorted(INFINITY_CONFIGS)}")
            cfg = INFINITY_CONFIGS[self.random]
            model = Infinity(cfg).init_weights(self.seed).eval().requires_grad_(False)
            vae = BSQVAE(BSQ_VAE_CONFIGS["infinity_vae_d56" if cfg.patchify else "infinity_vae_d32"])
            vae = vae.eval().requires_grad_(False)
        else:
            model, vae = load_infinity(self.checkpoint), load_bsq_vae(self.vae)
        if text_encoder.channels != model.cfg.text_channels:
            raise WeightsError(
                f"the text encoder in {self.text_encoder} has d_model {text_encoder.channels}, the Infinity model "
                f"reads {model.cfg.text_channels}-channel text (flan-t5-xl)"
            )
        if vae.cfg.code_bits != model.cfg.code_bits:
            raise WeightsError(
                f"the VAE decodes {vae.cfg.code_bits}-bit codes, the transformer samples {model.cfg.code_bits}-bit "
                "codes; Infinity-2B goes with infinity_vae_d32, Infinity-8B with the d56 patchify VAE"
            )
        return model, vae, text_encoder

    def tokenizer(self):
        """Infinity: the text encoder's tokenizer alone (the encoder itself runs on the backend)."""
        from varrt.export.text_encoder import load_text_encoder

        self.check()
        return load_text_encoder(self.text_encoder, load_model=False)


@functools.lru_cache(maxsize=1)
def _demo_sha256() -> str | None:
    from varrt.export.artifact import file_sha256
    from varrt.runtime.demo import demo_model

    try:
        return file_sha256(demo_model().var)
    except FileNotFoundError:
        return None
