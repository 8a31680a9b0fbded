"""One prepared GPU check: what POISE's feature capture and value probe cost next to the actor's forward.

GRPO/DAPO's actor computes old log-probs and nothing else; POISE's actor also pools one decoder layer's
hidden states in that same forward (a forward hook, :class:`poise_verl.core.capture.PackedPoolingHook`,
installed by :class:`poise_verl.verl_ext.capture_engine.PoiseFSDPEngine`), and the driver fits a small probe
on them every step. This check measures both costs:

1. a random-initialised model of Qwen3-4B's shape in bf16 (``--quick``: the tiny CPU policy's shape in fp32);
2. the actor's old-log-prob forward in verl's remove-padding layout: 32 rollouts of ~4096 tokens packed
   into ``(1, total_nnz)`` rows of 8 sequences (~32k tokens, like verl's ``log_prob_max_token_len_per_gpu``),
   timed with and without capture, alternating, with the spread, a bootstrap interval and the hook timed
   alone. Which forward is timed (the run prints ``timed path: ...`` and writes it to the JSON):

   - **verl's engine** wherever verl can be imported (:mod:`.verl_engine`): ``infer_batch`` of verl's
     ``FSDPEngineWithLMHead`` (what GRPO/DAPO run) against ``PoiseFSDPEngine`` with the capture flag (what
     POISE runs), FSDP2 on one rank, the same batch and weights: the overhead a user pays;
   - **the hand-written packed forward** (:mod:`.packed_forward`) where verl cannot be imported (verl
     0.9.1 imports Ray at import time; the prepared GPU box has torch + transformers only). It does what
     verl's engine does for this layout (per-sequence attention, rolled labels, chunked log-softmax,
     entropies) and the quick run checks that it gives verl's log-probs, entropies and pooled features
     (phase ``engine_equivalence``, asserted by ``tests/benchmarks``);

   plus correctness checks of the hand-written path (captured features equal the pooled
   ``output_hidden_states``; the packed attention does not leak across sequences);
3. the probe on the host CPU (:mod:`.probe_phases`): fit from scratch on a full 4096-row buffer and predict
   512 rollouts (one POISE step of 256 prompts x 2), the buffer insert, the entropy statistics; each as a
   percent of a conservative LOWER bound of a step's time (old-log-prob forward + training
   forward/backward, generation excluded), so every percent is an upper bound.

Run from the repository root::

    python -m benchmarks.gpu_check --out "$OUT/gpu_check.json"     # GPU, ~3-4 min on an H100
    python -m benchmarks.gpu_check --quick --out /tmp/gpu_check.json   # tiny CPU path, about a minute

The JSON is rewritten after every phase, so a run cut short still reports what it measured.
See docs/PERFORMANCE.md.
"""
