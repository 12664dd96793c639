# ---- transformers wrapper (appended to the model code by learners.hf_export) ----
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import MaskedLMOutput  # noqa: E402

MODEL_FIELDS = ("vocab_size", "mask_token_id", "n_blocks", "n_layer", "n_head", "n_embd", "mlp_ratio",
                "overlap", "t_eps", "rope_base", "max_seq_len")


class EigenloopConfig(PretrainedConfig):
    model_type = "eigenloop_mdm"

    def __init__(self, vocab_size=260, mask_token_id=256, n_blocks=3, n_layer=2, n_head=4, n_embd=128,
                 mlp_ratio=4, overlap=0.05, t_eps=1e-3, rope_base=10000.0, max_seq_len=256, **kwargs):
        self.vocab_size, self.mask_token_id, self.n_blocks, self.n_layer = vocab_size, mask_token_id, n_blocks, n_layer
        self.n_head, self.n_embd, self.mlp_ratio, self.overlap = n_head, n_embd, mlp_ratio, overlap
        self.t_eps, self.rope_base, self.max_seq_len = t_eps, rope_base, max_seq_len
        super().__init__(**kwargs)


class EigenloopForMaskedDiffusion(PreTrainedModel):
    """The block-local masked-diffusion LM behind the transformers API.

    ``forward(input_ids, t=None, block=None)``: without ``t`` (LLaDA-style callers pass only ids)
    t is the share of [MASK] among the non-pad positions, and the block that owns it runs.
    """

    config_class = EigenloopConfig
    base_model_prefix = "lm"

    def __init__(self, config):
        super().__init__(config)
        self.lm = BlockDiffusionLM(ModelConfig(**{k: getattr(config, k) for k in MODEL_FIELDS}))
        self.post_init()

    def _init_weights(self, module):
        pass  # DenoiserBlock initialises itself; checkpoints overwrite everything

    def forward(self, input_ids, t=None, block=None, attention_mask=None, **kwargs):
        if t is None:
            valid = input_ids != self.config.pad_token_id if self.config.pad_token_id is not None else torch.ones_like(input_ids, dtype=torch.bool)
            t = ((input_ids == self.config.mask_token_id) & valid).sum(1).float() / valid.sum(1).clamp(min=1)
            t = t.clamp(min=self.config.t_eps)
        elif not torch.is_tensor(t):
            t = torch.full((input_ids.size(0),), float(t), device=input_ids.device)
        if block is None:
            block = block_of_t(self.lm.cfg, float(t.float().mean()))
        return MaskedLMOutput(logits=self.lm(input_ids, t, block=block, attention_mask=attention_mask))
