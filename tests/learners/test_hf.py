"""transformers interop: export/reload with identical logits; adapter sampling and block-local GRPO."""

from types import SimpleNamespace

import torch
import torch.nn as nn

from learners.hf_adapter import DiffusionLMAdapter, dream_shift
from learners.hf_export import export_hf
from learners.model import BlockDiffusionLM, ModelConfig
from learners.tokenizer import ByteTokenizer


def exported(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    native = BlockDiffusionLM(ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2)).eval()
    export_hf(native, tmp_path / "hf")
    return native, AutoModel.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()


def test_export_reloads_with_identical_logits(tmp_path):
    native, hf = exported(tmp_path)
    x = torch.randint(0, 256, (3, 14))
    x[:, 9:] = 256  # 5 of 14 masked -> t = 0.36 -> block 0
    with torch.no_grad():
        for t, b in [(0.2, 0), (0.9, 1)]:
            tt = torch.full((3,), t)
            assert torch.equal(native(x, tt, block=b), hf(input_ids=x, t=tt, block=b).logits)
        assert torch.equal(native(x, torch.full((3,), 5 / 14), block=0), hf(input_ids=x).logits)


def test_adapter_on_export_samples_deterministically_and_updates_one_block_per_range(tmp_path):
    _, hf = exported(tmp_path)
    ad = DiffusionLMAdapter(hf, ByteTokenizer(), lr=1e-3)
    a = ad.sample("M X>", n=4, gen_len=8, steps=8, seed=3)
    assert a == ad.sample("M X>", n=4, gen_len=8, steps=8, seed=3) and len(a) == 4
    before = [p.detach().clone() for p in hf.lm.blocks[1].parameters()]
    stats = ad.grpo_step("M X>", ["long 1 h5", "short 1 h5"], [1.0, -1.0], gen_len=8)
    assert [s["block"] for s in stats] == [0, 1]
    assert any(not torch.equal(p, q) for p, q in zip(hf.lm.blocks[1].parameters(), before))


class TinyLLaDA(nn.Module):
    """A LLaDA-shaped bidirectional LM (model.layers, model.norm, lm_head; t-free) for the adapter."""

    def __init__(self, vocab=260, d=32, n_layers=4, mask_token_id=256):
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=mask_token_id)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList(
            [nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True) for _ in range(n_layers)])
        self.model.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h)
        return SimpleNamespace(logits=self.lm_head(self.model.norm(h)))


def test_layer_group_adapter_keeps_gradients_inside_groups_and_applies_dream_shift():
    torch.manual_seed(0)
    m = TinyLLaDA()
    ad = DiffusionLMAdapter(m, ByteTokenizer(), convention="dream", n_blocks=2, lr=1e-3)
    x = torch.randint(0, 256, (2, 6))
    assert torch.equal(ad.logits(x), dream_shift(m(x).logits))
    # group 0's loss must not reach group 1's layers, and vice versa
    ad.block_logits(x, torch.full((2,), 0.3), 0).sum().backward()
    assert all(p.grad is None for p in m.model.layers[2:].parameters())
    assert any(p.grad is not None for p in m.model.layers[:2].parameters())
    m.zero_grad(set_to_none=True)
    ad.block_logits(x, torch.full((2,), 0.8), 1).sum().backward()
    assert all(p.grad is None for p in m.model.layers[:2].parameters())
    stats = ad.grpo_step("S h5 0:a|1:b>", ["pick 0 h5", "pick 1 h5"], [1.0, -1.0], gen_len=8)
    assert len(stats) == 2 and all(s["grad_norm"] > 0 for s in stats)
    assert len(ad.sample("S h5 0:a|1:b>", n=3, gen_len=6, steps=6, seed=0)) == 3
