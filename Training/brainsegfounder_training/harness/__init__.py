"""The run harness fine-tuning and pretraining share.

run_folder       the run folder, atomic text and JSON files, starting or resuming a run
recipe           YAML recipes over defaults, ``a.b=value`` overrides, the shared checks
run_loop         the base loop: processes, progress, cancel, first files, state and best model
optimisation     AdamW, warm-up cosine schedule, one mixed-precision decision
state            resumable state and best model, written atomically (a full disk is one error)
metrics_log      metrics.jsonl and TensorBoard
host             seeding, peak memory
distributed      one process or many (torchrun, DDP)
data             data set paths, cache keys, inputs read as ``segment`` reads them
initial_weights  what was loaded, and inflating input kernels to new channels
plots            learning curves and box plots
"""
