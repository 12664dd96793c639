"""Export the native model as a transformers checkpoint loadable with ``trust_remote_code``.

The directory gets ``config.json`` (with ``auto_map``), ``model.safetensors`` and
``modeling_eigenloop.py``, which is ``learners/model.py`` verbatim (it imports only torch)
followed by a thin ``PreTrainedModel`` wrapper, so the exported logits are computed by exactly
the code that trained the weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file

from learners import model as model_module
from learners.model import BlockDiffusionLM
from learners.tokenizer import ByteTokenizer

MODELING_FILE = "modeling_eigenloop.py"


def modeling_source() -> str:
    wrapper = Path(__file__).with_name("_hf_wrapper.py").read_text()
    return Path(model_module.__file__).read_text() + "\n\n" + wrapper


def export_hf(model: BlockDiffusionLM, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a transformers checkpoint of ``model`` to ``directory``; returns the path."""
    tok = tokenizer or ByteTokenizer()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {
        **asdict(model.cfg),
        "model_type": "eigenloop_mdm",
        "architectures": ["EigenloopForMaskedDiffusion"],
        "auto_map": {"AutoConfig": "modeling_eigenloop.EigenloopConfig",
                     "AutoModel": "modeling_eigenloop.EigenloopForMaskedDiffusion",
                     "AutoModelForMaskedLM": "modeling_eigenloop.EigenloopForMaskedDiffusion"},
        "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "torch_dtype": "float32",
    }
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    (d / MODELING_FILE).write_text(modeling_source())
    tensors = {f"lm.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d
