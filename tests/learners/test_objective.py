"""The local objective: vmapped (batched) blocks equal the per-block loop; ELBO sums all blocks."""

import copy

import torch

from learners.model import BlockDiffusionLM, ModelConfig
from learners.objective import elbo_bits, make_optimizers, train_blocks


def test_vmapped_blocks_give_the_same_update_as_the_loop():
    torch.manual_seed(0)
    a = BlockDiffusionLM(ModelConfig(n_blocks=3, n_layer=1, n_embd=32, n_head=2))
    b = copy.deepcopy(a)
    x0 = torch.randint(0, 256, (4, 10))
    elig = torch.ones_like(x0, dtype=torch.bool)
    attn = torch.ones_like(x0)
    la = train_blocks(a, make_optimizers(a, 1e-2), x0, elig, [0, 2], torch.Generator().manual_seed(1),
                      attention_mask=attn, batched=False)
    lb = train_blocks(b, make_optimizers(b, 1e-2), x0, elig, [0, 2], torch.Generator().manual_seed(1),
                      attention_mask=attn, batched=True)
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(a.blocks[1].parameters(), b.blocks[1].parameters()))


def test_elbo_of_an_untrained_model_is_near_uniform_and_drops_with_training():
    torch.manual_seed(0)
    m = BlockDiffusionLM(ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2))
    x0 = torch.tensor([list(b"abababababababab")] * 8)
    elig = torch.ones_like(x0, dtype=torch.bool)
    before = elbo_bits(m, x0, elig, torch.Generator().manual_seed(0))
    assert 6.0 < before < 10.0  # log2(259) = 8.0 bits for a uniform guess over non-mask tokens
    opts = make_optimizers(m, 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        train_blocks(m, opts, x0, elig, [0, 1], gen)
    assert elbo_bits(m, x0, elig, torch.Generator().manual_seed(0)) < before / 3
