"""Reference fixtures for rlzero's GRPO math, computed by TRL 1.16.0's own GRPOTrainer code.

Writes
    tests/fixtures/grpo/trl_loss.json        -- GRPOTrainer._compute_loss: loss, d loss / d per_token_logps, metrics
    tests/fixtures/grpo/trl_advantages.json  -- GRPOTrainer._generate_and_score_completions: advantages, reward metrics

Nothing here re-implements TRL's formulas. For every case the script builds a real `GRPOTrainer` (a tiny random
`LlamaForCausalLM` saved to a temporary directory, the committed tests/fixtures/tiny-llama/tokenizer.json, CPU,
float32 model weights, report_to="none") from a `GRPOConfig` holding that case's settings, then:

* Loss: the instance's `_get_per_token_logps_and_entropies` is replaced by a stub that returns a fixed float64
  leaf tensor `per_token_logps` (requires_grad=True) and fixed entropies (the model forward is the only thing
  stubbed). The `inputs` dict is built the way `_generate_and_score_completions` would hand it over
  (prompt_ids/prompt_mask/completion_ids/completion_mask as int64, float64 advantages, optional
  old_per_token_logps / ref_per_token_logps, int64 `num_items_in_batch`), the model is put in train mode,
  `current_gradient_accumulation_steps` is set to `gradient_accumulation_steps` (what `Trainer`'s training loop sets
  for a full accumulation window; `__init__` does not set it), then `trainer._compute_loss(model, inputs)` is called,
  `.backward()` run, and the loss, `per_token_logps.grad` and what `_compute_loss` appended to
  `trainer._metrics["train"]` are recorded.
* Advantages: the instance's `_generate_single_turn` (the narrowest method that does the generation) is replaced
  by a stub returning fixed completion token ids (and no sampling logprobs). Everything else -- prompt tokenization,
  decoding, `_calculate_rewards` with plain-Python reward functions (returning fixed values, `None` = abstain),
  grouping, normalization, logging -- is TRL's `_generate_and_score_completions` as is. The inputs are the rows the
  repeat sampler would produce (each prompt repeated num_generations times, consecutive). beta=0 and
  gradient_accumulation_steps == steps_per_generation, so TRL does no model forward in that method.

torch's default dtype is set to float64 before anything runs, so every float tensor TRL creates itself (e.g.
`rewards_per_func = torch.zeros(...)`, the reward tensors, clamp results) is float64. Note that TRL converts each
reward function's output through a float32 tensor (`torch.tensor(..., dtype=torch.float32)`) and stores
`reward_weights` as float32; the fixture's rewards and weights are chosen exactly representable in float32, so this
loses nothing.

Reference stack (CPU is enough; a CUDA torch wheel works too):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install -r scripts/requirements-reference.txt
    # pins: torch==2.15.0 transformers==5.24.0 trl==1.16.0, plus what trl pulls in anyway (accelerate==1.15.0
    # datasets==5.2.0 tokenizers==0.23.3 safetensors==0.8.0 numpy==2.4.6), pinned for reproducibility. Python 3.11.
    /tmp/refvenv/bin/python scripts/make_trl_grpo_fixtures.py      # from the repository root

The output is deterministic (all data seeded); re-running must give byte-identical JSON. NaN is written as null.
"""
import copy
import json
import logging
import math
import os
import sys
import tempfile
import warnings

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "grpo")
TOKENIZER_JSON = os.path.join(ROOT, "tests", "fixtures", "tiny-llama", "tokenizer.json")
GENERATOR = "scripts/make_trl_grpo_fixtures.py"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

assert trl.__version__ == "1.16.0", f"these fixtures pin TRL 1.16.0, found {trl.__version__}"

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
logging.getLogger("trl").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

VERSIONS = {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
B, T, P = 4, 6, 3  # loss fixtures: sequences, completion length (= max_completion_length), prompt length


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def clean(x):
    """Nested lists/dicts of floats -> JSON-safe (NaN/inf -> None)."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return clean(x.tolist())
    if isinstance(x, float):
        return None if (math.isnan(x) or math.isinf(x)) else x
    return x


def make_tokenizer():
    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER_JSON, bos_token="<s>", eos_token="</s>",
                                  pad_token="<unk>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def make_model_dir(tmp):
    """A tiny random Llama saved to disk: GRPOTrainer loads the policy (and, for beta>0, the reference) from it."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    path = os.path.join(tmp, "tiny-llama-random")
    model.save_pretrained(path)
    return path


def make_trainer(model_dir, tok, tmp, reward_funcs, train_dataset, **cfg):
    args = GRPOConfig(output_dir=os.path.join(tmp, "out"), use_cpu=True, bf16=False, fp16=False, report_to="none",
                      save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                      model_init_kwargs={"dtype": "float32"}, **cfg)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                          processing_class=tok)
    trainer.model.train()
    return trainer


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


# ----------------------------------------------------------------------------------------------------------------
# Loss fixtures
# ----------------------------------------------------------------------------------------------------------------

# Completion masks (B x T). MASK_A has a fully masked row (TRL handles it without NaN in the loss, see notes) and a
# single-token row; MASK_B is ragged with a single-token row but no empty row.
MASK_A = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
MASK_B = [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]]
# Advantage patterns: mixed signs and one exact zero.
ADV_A = [0.8, -1.1, 0.0, 0.6]
ADV_B = [-0.7, 1.3, -0.4, 0.0]

DEFAULTS = dict(importance_sampling_level="token", beta=0.0, epsilon=0.2, epsilon_high=None, delta=None,
                use_bias_correction_kl=True, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,
                gradient_accumulation_steps=1, steps_per_generation=None, old=True, noise=0.3, mask="A", shift=None)
# Optional per-row shift of log(pi/pi_old) (old = lp + noise - shift). Token noise of +-0.3 averages out over a row,
# so sequence-level ratios would sit near 1; "seq" pushes rows with positive / negative advantage past 1 + eps_high /
# below 1 - eps_low. "delta" pushes a negative-advantage row's ratio past delta=1.5, so two-sided clipping fires.
SHIFT = {("seq", "A"): [0.3, -0.3, 0.2, -0.05], ("seq", "B"): [-0.3, 0.3, 0.05, 0.2],
         ("delta", "A"): [0.3, 0.5, 0.0, 0.0], ("delta", "B"): [0.5, 0.0, 0.5, 0.0]}


def C(name, loss_type, **kw):
    case = dict(DEFAULTS)
    bad = set(kw) - set(case)
    assert not bad, bad
    case.update(kw)
    case["name"], case["loss_type"] = name, loss_type
    return case


# Combinations TRL rejects: none of loss_type x importance_sampling_level is rejected in 1.16.0; GRPOTrainer.__init__
# only logs warnings for luspo+token, vespo+sequence and sequence+{bnpo,dr_grpo,dapo,cispo}. Those are included.
LOSS_CASES = [
    # grpo
    C("grpo_token_beta0_ga1_old", "grpo"),
    C("grpo_token_beta0.04_ga1_noold", "grpo", beta=0.04, old=False, mask="B"),
    C("grpo_sequence_beta0.04_ga2_old_epshigh0.28", "grpo", importance_sampling_level="sequence", beta=0.04,
      epsilon_high=0.28, gradient_accumulation_steps=2, shift="seq"),
    C("grpo_token_beta0_ga1_old_delta1.5", "grpo", delta=1.5, noise=0.6, mask="B"),
    C("grpo_token_beta0.04_ga1_old_nobiascorr", "grpo", beta=0.04, use_bias_correction_kl=False),
    C("grpo_sequence_beta0_ga1_noold", "grpo", importance_sampling_level="sequence", old=False, mask="B"),
    # bnpo
    C("bnpo_token_beta0_ga2_old", "bnpo", gradient_accumulation_steps=2),
    C("bnpo_token_beta0.04_ga1_old_epshigh0.28", "bnpo", beta=0.04, epsilon_high=0.28, mask="B"),
    C("bnpo_sequence_beta0_ga1_old", "bnpo", importance_sampling_level="sequence", shift="seq"),
    # dr_grpo
    C("dr_grpo_token_beta0_ga1_old", "dr_grpo", mask="B"),
    C("dr_grpo_token_beta0.04_ga2_noold", "dr_grpo", beta=0.04, gradient_accumulation_steps=2, old=False),
    C("dr_grpo_sequence_beta0.04_ga1_old", "dr_grpo", importance_sampling_level="sequence", beta=0.04, mask="B",
      shift="seq"),
    # dapo
    C("dapo_token_beta0_ga1_old_epshigh0.28", "dapo", epsilon_high=0.28),
    C("dapo_token_beta0.04_ga2_old_epshigh0.28", "dapo", beta=0.04, epsilon_high=0.28,
      gradient_accumulation_steps=2, mask="B"),
    C("dapo_token_beta0_ga2_noold", "dapo", gradient_accumulation_steps=2, old=False),
    C("dapo_token_beta0.04_ga1_old_delta1.5", "dapo", beta=0.04, delta=1.5, noise=0.6, shift="delta"),
    C("dapo_sequence_beta0_ga1_old", "dapo", importance_sampling_level="sequence", mask="B", shift="seq"),
    C("dapo_token_beta0_ga1_spg2_old", "dapo", steps_per_generation=2, mask="B"),
    C("dapo_token_beta0.04_ga2_old_nobiascorr", "dapo", beta=0.04, gradient_accumulation_steps=2,
      use_bias_correction_kl=False),
    # cispo (epsilon_high is the cap on the ratio itself)
    C("cispo_token_beta0_ga1_old_epshigh1.1", "cispo", epsilon_high=1.1),
    C("cispo_token_beta0.04_ga2_old_epshigh1.1", "cispo", beta=0.04, epsilon_high=1.1,
      gradient_accumulation_steps=2, mask="B"),
    C("cispo_sequence_beta0_ga1_old_epshigh1.05", "cispo", importance_sampling_level="sequence", epsilon_high=1.05,
      shift="seq"),
    C("cispo_token_beta0.04_ga1_noold_epshigh5", "cispo", beta=0.04, epsilon_high=5.0, old=False, mask="B"),
    # sapo
    C("sapo_token_beta0_ga1_old", "sapo"),
    C("sapo_token_beta0.04_ga2_old", "sapo", beta=0.04, gradient_accumulation_steps=2, mask="B"),
    C("sapo_sequence_beta0_ga1_old", "sapo", importance_sampling_level="sequence", shift="seq"),
    C("sapo_token_beta0.04_ga1_noold", "sapo", beta=0.04, old=False, mask="B"),
    C("sapo_token_beta0_ga1_old_temps0.8_1.3", "sapo", sapo_temperature_pos=0.8, sapo_temperature_neg=1.3,
      noise=0.6, mask="B"),
    # luspo
    C("luspo_sequence_beta0_ga1_old", "luspo", importance_sampling_level="sequence", shift="seq"),
    C("luspo_sequence_beta0.04_ga2_old", "luspo", importance_sampling_level="sequence", beta=0.04,
      gradient_accumulation_steps=2, mask="B", shift="seq"),
    C("luspo_token_beta0_ga1_old", "luspo", mask="B"),
    C("luspo_sequence_beta0_ga1_old_delta1.5", "luspo", importance_sampling_level="sequence", delta=1.5, noise=0.6,
      shift="delta"),
    C("luspo_token_beta0.04_ga1_noold", "luspo", beta=0.04, old=False),
    # vespo
    C("vespo_token_beta0_ga1_old", "vespo"),
    C("vespo_token_beta0.04_ga2_old", "vespo", beta=0.04, gradient_accumulation_steps=2, mask="B"),
    C("vespo_token_beta0_ga1_noold", "vespo", old=False, mask="B"),
    C("vespo_sequence_beta0.04_ga1_old", "vespo", importance_sampling_level="sequence", beta=0.04),
    C("vespo_token_beta0.04_ga1_old_nobiascorr", "vespo", beta=0.04, use_bias_correction_kl=False, mask="B"),
    C("vespo_token_beta0_ga2_old_params", "vespo", vespo_k_pos=1.0, vespo_lambda_pos=1.5, vespo_k_neg=2.0,
      vespo_lambda_neg=4.0, gradient_accumulation_steps=2, shift="seq"),
]


def loss_case_data(index, case):
    """Seeded inputs for one case."""
    g = torch.Generator().manual_seed(1000 + index)
    mask = torch.tensor(MASK_A if case["mask"] == "A" else MASK_B, dtype=torch.long)
    adv = torch.tensor(ADV_A if case["mask"] == "A" else ADV_B, dtype=torch.float64)
    lp = -3.0 + (3.0 - 0.05) * torch.rand(B, T, generator=g, dtype=torch.float64)  # in [-3, -0.05]
    old = lp + case["noise"] * (2 * torch.rand(B, T, generator=g, dtype=torch.float64) - 1)
    if case["shift"] is not None:
        old = old - torch.tensor(SHIFT[(case["shift"], case["mask"])], dtype=torch.float64).unsqueeze(1)
    ref = lp + 0.3 * (2 * torch.rand(B, T, generator=g, dtype=torch.float64) - 1)
    ent = 0.2 + 2.0 * torch.rand(B, T, generator=g, dtype=torch.float64)
    prompt_ids = torch.randint(5, 128, (B, P), generator=g)
    completion_ids = torch.randint(5, 128, (B, T), generator=g) * mask  # pad id 0 where masked
    # TRL's num_items_in_batch is the mask sum over the whole generation batch (steps_per_generation micro-batches);
    # with more than one micro-batch, the other micro-batches add tokens that aren't in this one.
    spg = case["steps_per_generation"] or case["gradient_accumulation_steps"]
    num_items = int(mask.sum()) + (0 if spg == 1 else 9 * (spg - 1))
    return mask, adv, lp, old, ref, ent, prompt_ids, completion_ids, num_items


def run_loss_case(index, case, model_dir, tok, tmp, dataset):
    mask, adv, lp, old, ref, ent, prompt_ids, completion_ids, num_items = loss_case_data(index, case)
    ga = case["gradient_accumulation_steps"]
    spg = case["steps_per_generation"]
    cfg = dict(loss_type=case["loss_type"], importance_sampling_level=case["importance_sampling_level"],
               beta=case["beta"], epsilon=case["epsilon"], epsilon_high=case["epsilon_high"], delta=case["delta"],
               use_bias_correction_kl=case["use_bias_correction_kl"],
               sapo_temperature_pos=case["sapo_temperature_pos"], sapo_temperature_neg=case["sapo_temperature_neg"],
               vespo_k_pos=case["vespo_k_pos"], vespo_lambda_pos=case["vespo_lambda_pos"],
               vespo_k_neg=case["vespo_k_neg"], vespo_lambda_neg=case["vespo_lambda_neg"],
               max_completion_length=T, num_generations=4, per_device_train_batch_size=B,
               gradient_accumulation_steps=ga,
               # num_iterations=2 makes TRL keep old_per_token_logps (generate_every = spg * num_iterations no longer
               # divides gradient_accumulation_steps); num_iterations=1 with spg == ga makes it pass None.
               num_iterations=2 if case["old"] else 1)
    if spg is not None:
        cfg["steps_per_generation"] = spg
    trainer = make_trainer(model_dir, tok, tmp, [zero_reward], dataset, **cfg)
    spg = trainer.args.steps_per_generation
    # Check that TRL itself would (not) carry old_per_token_logps for this config.
    generate_every = spg * trainer.num_iterations
    assert (ga % generate_every != 0) == case["old"], (case["name"], ga, spg)

    per_token_logps = lp.clone().requires_grad_(True)
    entropies = ent.clone()

    def fixed_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == T and input_ids.shape == (B, P + T)
        return per_token_logps, entropies, None

    trainer._get_per_token_logps_and_entropies = fixed_logps_and_entropies
    # Set by Trainer's training loop (not __init__); a full accumulation window has this many micro-batches.
    trainer.current_gradient_accumulation_steps = ga
    trainer._metrics["train"].clear()

    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": mask,
        "advantages": adv.clone(),
        "num_items_in_batch": torch.tensor(num_items),  # int64, as TRL's gather(loss_mask.sum()).sum()
    }
    if case["old"]:
        inputs["old_per_token_logps"] = old.clone()
    if case["beta"] != 0.0:
        inputs["ref_per_token_logps"] = ref.clone()

    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    assert loss.dtype == torch.float64, loss.dtype
    metrics = {}
    for k, v in trainer._metrics["train"].items():
        assert len(v) == 1, (k, v)
        metrics[k] = float(v[0])

    eps_high = trainer.epsilon_high
    out = {
        "name": case["name"], "loss_type": case["loss_type"],
        "importance_sampling_level": case["importance_sampling_level"], "beta": case["beta"],
        "epsilon_low": trainer.epsilon_low, "epsilon_high": eps_high, "delta": case["delta"],
        "use_bias_correction_kl": case["use_bias_correction_kl"],
        "sapo_temperature_pos": case["sapo_temperature_pos"], "sapo_temperature_neg": case["sapo_temperature_neg"],
        "vespo_k_pos": case["vespo_k_pos"], "vespo_lambda_pos": case["vespo_lambda_pos"],
        "vespo_k_neg": case["vespo_k_neg"], "vespo_lambda_neg": case["vespo_lambda_neg"],
        "max_completion_length": T, "gradient_accumulation_steps": ga, "steps_per_generation": spg,
        "num_iterations": trainer.num_iterations, "num_items_in_batch": num_items,
        "per_token_logps": lp.tolist(),
        "old_per_token_logps": old.tolist() if case["old"] else None,
        "ref_per_token_logps": ref.tolist() if case["beta"] != 0.0 else None,
        "entropies": ent.tolist(),
        "advantages": adv.tolist(),
        "completion_mask": mask.tolist(),
        "loss": loss.item(),
        "grad_per_token_logps": per_token_logps.grad.tolist(),
        "metrics": dict(sorted(metrics.items())),
    }
    del trainer
    return out


# ----------------------------------------------------------------------------------------------------------------
# Advantage fixtures
# ----------------------------------------------------------------------------------------------------------------

N = None  # abstain
# Reward tables: one row per completion, prompts' groups consecutive (num_generations = 4). Columns = reward funcs
# "correctness" (weight 1.0) and "format" (weight 0.5). All values are exact in float32.
TABLE_3P = [
    # group 0: mixed, "format" abstains on one sample
    [1.0, 0.5], [0.0, N], [0.25, 1.0], [0.75, 0.0],
    # group 1: every sample gets the same rewards -> zero std
    [0.5, 1.0], [0.5, 1.0], [0.5, 1.0], [0.5, 1.0],
    # group 2: one sample where every function abstains, "format" abstains on another
    [1.0, 1.0], [0.0, N], [N, N], [0.5, 0.25],
]
TABLE_2P_EDGE = [
    # group 0: "format" abstains on the whole group (its group mean/std are NaN)
    [1.0, N], [0.0, N], [0.5, N], [0.25, N],
    # group 1: only one scorable sample (std over one value is NaN in TRL's nanstd), the rest all-abstain
    [N, N], [0.75, 0.5], [N, N], [N, N],
]
TABLE_2P_SINGLE = [[0.0], [1.0], [1.0], [0.5], [0.25], [0.25], [0.25], [0.25]]

ADV_CASES = [
    *[dict(name=f"3prompts_{agg}_{scale}", table=TABLE_3P, names=["correctness", "format"], weights=[1.0, 0.5],
           scale_rewards=scale, multi_objective_aggregation=agg)
      for agg in ["sum_then_normalize", "normalize_then_sum"] for scale in ["group", "batch", "none"]],
    *[dict(name=f"2prompts_edge_{agg}_{scale}", table=TABLE_2P_EDGE, names=["correctness", "format"],
           weights=[1.0, 0.5], scale_rewards=scale, multi_objective_aggregation=agg)
      for agg, scale in [("sum_then_normalize", "group"), ("sum_then_normalize", "batch"),
                         ("sum_then_normalize", "none"), ("normalize_then_sum", "group")]],
    dict(name="2prompts_single_func_unweighted_group", table=TABLE_2P_SINGLE, names=["correctness"], weights=None,
         scale_rewards="group", multi_objective_aggregation="sum_then_normalize"),
]
NUM_GENERATIONS = 4


def make_reward_func(name, table, col):
    def reward(prompts, completions, completion_ids, sample_idx, **kwargs):
        return [table[i][col] for i in sample_idx]

    reward.__name__ = name  # TRL names the metrics after the callable
    return reward


def run_adv_case(case, model_dir, tok, tmp):
    table = case["table"]
    n = len(table)
    num_prompts = n // NUM_GENERATIONS
    funcs = [make_reward_func(name, table, j) for j, name in enumerate(case["names"])]
    prompts = [f"w{10 + 3 * p} w{11 + 3 * p} w{12 + 3 * p}" for p in range(num_prompts)]
    # Rows as RepeatSampler + identity collator deliver them: each prompt num_generations times, consecutive.
    rows = [{"prompt": prompts[i // NUM_GENERATIONS], "sample_idx": i} for i in range(n)]
    dataset = Dataset.from_list([{"prompt": p, "sample_idx": 0} for p in prompts])
    cfg = dict(num_generations=NUM_GENERATIONS, per_device_train_batch_size=n, gradient_accumulation_steps=1,
               max_completion_length=T, beta=0.0, scale_rewards=case["scale_rewards"],
               multi_objective_aggregation=case["multi_objective_aggregation"])
    if case["weights"] is not None:
        cfg["reward_weights"] = case["weights"]
    trainer = make_trainer(model_dir, tok, tmp, funcs, dataset, **cfg)

    # Fixed completions: lengths 1..6, most ending in EOS (id 2); token ids depend only on the sample index.
    completion_ids = []
    for i in range(n):
        length = 1 + (i * 5) % T
        ids = [20 + (7 * i + 3 * k) % 100 for k in range(length)]
        if i % 3 != 2:
            ids[-1] = 2
        completion_ids.append(ids)
    calls = []

    def fixed_generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        assert len(prompt_ids) == n
        calls.append(1)
        return copy.deepcopy(completion_ids), None

    trainer._generate_single_turn = fixed_generate_single_turn
    trainer._metrics["train"].clear()
    out = trainer._generate_and_score_completions(copy.deepcopy(rows))
    assert calls == [1]
    assert "old_per_token_logps" not in out and "ref_per_token_logps" not in out
    m = trainer._metrics["train"]
    keys = ["reward", "reward_std", "frac_reward_zero_std"]
    for name in trainer.reward_func_names:
        keys += [f"rewards/{name}/mean", f"rewards/{name}/std"]
    metrics = {k: float(m[k][0]) for k in keys}
    assert trainer.reward_func_names == case["names"]
    res = {
        "name": case["name"], "num_generations": NUM_GENERATIONS, "num_prompts": num_prompts,
        "scale_rewards": case["scale_rewards"], "multi_objective_aggregation": case["multi_objective_aggregation"],
        "reward_names": list(case["names"]), "reward_weights": trainer.reward_weights.tolist(),
        "rewards_per_func": [[(None if v is None else float(v)) for v in row] for row in table],
        "advantages": out["advantages"].tolist(),
        "advantages_dtype": str(out["advantages"].dtype).replace("torch.", ""),
        "metrics": metrics,
    }
    del trainer
    return res


# ----------------------------------------------------------------------------------------------------------------

LOSS_NOTES = (
    "Generated by TRL 1.16.0's GRPOTrainer._compute_loss (model forward stubbed to return the fixed float64 "
    "per_token_logps / entropies below; everything in float64). NaN would be written as null (none occur). "
    "loss is what _compute_loss returns for ONE micro-batch in train mode, i.e. already divided by "
    "gradient_accumulation_steps (grpo/bnpo/dr_grpo/sapo/luspo) or normalized by "
    "num_items_in_batch * gradient_accumulation_steps / steps_per_generation (dapo/cispo/vespo). "
    "old_per_token_logps null = TRL was not given old logps (num_iterations=1 and steps_per_generation * "
    "num_iterations divides gradient_accumulation_steps) and used per_token_logps.detach(). "
    "ref_per_token_logps null = beta 0. "
    "grad_per_token_logps = d loss / d per_token_logps. metrics = what _compute_loss appended to "
    "trainer._metrics['train'] for this call. Rows whose completion_mask is all zero are handled by TRL without "
    "NaN in the loss (mask sums are clamped to >= 1); masked_seq_mean gives NaN for them, which nanmin/nanmax "
    "skip in clip_ratio/low_min and clip_ratio/high_max. With importance_sampling_level='sequence' (and for "
    "vespo/phi_seq_mean always) the (B,1) metrics are averaged over ALL B rows, fully masked ones included. "
    "No loss_type x importance_sampling_level combination is rejected by TRL 1.16.0 (only warnings)."
)
ADV_NOTES = (
    "Generated by TRL 1.16.0's GRPOTrainer._generate_and_score_completions with _generate_single_turn stubbed "
    "to return fixed completions; rewards come from plain-Python reward functions returning rewards_per_func "
    "(null = the function returned None, i.e. abstained). torch default dtype float64 (TRL builds the rewards "
    "tensor with the default dtype; its float32 conversion of reward values and weights is exact here). "
    "Samples are ordered group by group (num_generations consecutive samples per prompt). advantages are TRL's "
    "(after its nan_to_num(nan=0)); NaN metrics (e.g. std of a single value) are written as null. "
    "frac_reward_zero_std is computed by TRL in float32 (is_std_zero.float().mean()), hence 0.3333333432674408. "
    "normalize_then_sum ignores scale_rewards (always normalizes the weighted sum by the batch std). "
    "Tiny nonzero advantages like 2e-17 are TRL's float64 rounding; compare with a tolerance."
)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    tok = make_tokenizer()
    with tempfile.TemporaryDirectory(prefix="trl-grpo-fixtures-") as tmp:
        model_dir = make_model_dir(tmp)
        dataset = Dataset.from_list([{"prompt": f"w{5 + i} w{6 + i}"} for i in range(8)])
        names = [c["name"] for c in LOSS_CASES]
        assert len(set(names)) == len(names)
        loss_cases = []
        for i, case in enumerate(LOSS_CASES):
            loss_cases.append(run_loss_case(i, case, model_dir, tok, tmp, dataset))
            print(f"loss {case['name']}: {loss_cases[-1]['loss']!r}", file=sys.stderr)
        adv_cases = []
        for case in ADV_CASES:
            adv_cases.append(run_adv_case(case, model_dir, tok, tmp))
            print(f"adv {case['name']}: {adv_cases[-1]['advantages']}", file=sys.stderr)

    outputs = [("trl_loss.json", LOSS_NOTES, loss_cases), ("trl_advantages.json", ADV_NOTES, adv_cases)]
    for fname, notes, cases in outputs:
        doc = {"generator": GENERATOR, "versions": VERSIONS, "notes": notes, "cases": clean(cases)}
        text = json.dumps(doc, allow_nan=False, indent=None, separators=(",", ":"))
        # one case per line keeps diffs readable
        head, _, _ = text.partition('"cases":[')
        body = ",\n".join(json.dumps(c, allow_nan=False, separators=(",", ":")) for c in doc["cases"])
        text = head + '"cases":[\n' + body + "\n]}\n"
        json.loads(text)
        with open(os.path.join(OUT_DIR, fname), "w") as f:
            f.write(text)
        print(f"wrote {fname}: {len(cases)} cases, {len(text)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
