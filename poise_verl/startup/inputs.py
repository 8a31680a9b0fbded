"""Start-up checks on the files the config names: the training and validation data (they exist, verl can read them,
every row has what verl reads), the model's ``config.json`` and tokenizer, the prompts' token lengths, and the reward
function's file. Every problem found is listed at once (``poise_verl.startup.preflight``), each naming the key, the
file, the first bad row and what to change.

Reading data stays cheap: parquet files are read column by column (only the columns verl and POISE read), in record
batches, never into pandas.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from poise_verl.config import probe_layer_problem

# Columns verl's RLHFDataset and reward managers read from every row (besides the prompt column).
DATA_SOURCE = "data_source"
REWARD_MODEL = "reward_model"
GROUND_TRUTH = "ground_truth"
DATA_SUFFIXES = (".parquet", ".json", ".jsonl")
SCAN_BATCH_ROWS = 65536


def _paths(value) -> list[str]:
    if value is None:
        return []
    return (
        [str(v) for v in value]
        if OmegaConf.is_list(value) or isinstance(value, list | tuple)
        else [str(value)]
    )


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def check_data(config: DictConfig, is_poise: bool) -> list[str]:
    """Training and validation files: they exist, verl can read them, every row has what verl reads."""
    data = config.data
    prompt_key = str(data.get("prompt_key", "prompt"))
    domain_key = str(config.poise.buffer.domain_key) if is_poise else None
    problems: list[str] = []
    train_rows = 0
    for key in ("train_files", "val_files"):
        paths = _paths(data.get(key))
        if not paths:
            problems.append(f"data.{key} is empty: point it at one or more .parquet files")
        for path in paths:
            found, rows = check_data_file(
                path,
                f"data.{key}",
                prompt_key=prompt_key,
                domain_key=domain_key if key == "train_files" else None,
            )
            problems += found
            if key == "train_files":
                train_rows += rows
    batch = int(data.train_batch_size)
    max_samples = int(data.get("train_max_samples", -1) or -1)
    usable = min(train_rows, max_samples) if max_samples > 0 else train_rows
    if not problems and 0 < usable < batch:
        problems.append(
            f"data.train_files hold {usable} usable row(s), fewer than one step's data.train_batch_size={batch} "
            "prompts: add rows, or lower budget.rollouts_per_step"
        )
    return problems


def check_data_file(path: str, key: str, *, prompt_key: str, domain_key: str | None) -> tuple[list[str], int]:
    """Problems of one data file (empty when fine) and its row count. Remote paths are left to verl."""
    if _is_remote(path):
        return [], 0
    local = os.path.expanduser(path.removeprefix("file://"))
    if not os.path.isfile(local):
        hint = " (a folder: name the .parquet file itself)" if os.path.isdir(local) else ""
        return [
            (
                f"{key}: {path} does not exist{hint}. Set {key} to an existing file (python -m "
                "poise_verl.data.prepare writes the recipes' datasets, see recipes/README.md)"
            )
        ], 0
    if not local.endswith(DATA_SUFFIXES):
        return [f"{key}: {path} is not a .parquet, .json or .jsonl file (verl reads only these)"], 0
    try:
        schema, batches = _open_table(local, [prompt_key, DATA_SOURCE, REWARD_MODEL, domain_key])
    except Exception as error:  # noqa: BLE001 - any reader error is the user's file, reported as such
        return [f"{key}: {path} cannot be read ({type(error).__name__}: {error})"], 0

    names = set(schema.names)
    wanted = [prompt_key, DATA_SOURCE, REWARD_MODEL] + ([domain_key] if domain_key else [])
    missing = [c for c in wanted if c not in names]
    if missing:
        why = {
            prompt_key: f"the chat messages (data.prompt_key={prompt_key})",
            DATA_SOURCE: "names the dataset, passed to the reward function",
            REWARD_MODEL: f"a struct with {GROUND_TRUTH}, the answer the reward function compares against",
        }
        if domain_key:
            why[domain_key] = (
                f"the row's domain for POISE's replay buffer (poise.buffer.domain_key={domain_key})"
            )
        listed = "; ".join(f"{c}: {why[c]}" for c in missing)
        return [f"{key}: {path} has no column(s) {missing} ({listed}). Its columns are {sorted(names)}"], 0

    problems = _check_types(schema, path, key, prompt_key)
    if problems:
        return problems, 0
    import pyarrow.compute as pc

    rows = 0
    first_bad: dict[str, int] = {}
    bad_counts: dict[str, int] = {}
    for batch in batches:
        for what, mask in _bad_rows(batch, prompt_key).items():
            count = int(pc.sum(mask).as_py() or 0)
            if count:
                bad_counts[what] = bad_counts.get(what, 0) + count
                if what not in first_bad:
                    first_bad[what] = rows + int(pc.index(mask, True).as_py())
        rows += batch.num_rows
    if rows == 0:
        return [f"{key}: {path} has no rows"], 0
    fixes = {
        "prompt": f"a non-empty list of {{role, content}} messages in column {prompt_key}",
        "ground_truth": f"{REWARD_MODEL}.{GROUND_TRUTH} (the answer the reward function compares against)",
        "data_source": f"a {DATA_SOURCE}",
    }
    for what, index in first_bad.items():
        problems.append(
            f"{key}: {path} row {index} (0-based; {bad_counts[what]} of {rows} rows) has no {fixes[what]}: "
            "every row needs one. Fix or drop those rows"
        )
    return problems, rows


def _open_table(path: str, columns: list[str | None]):
    """(arrow schema, iterator of record batches with the wanted columns that exist)."""
    import pyarrow as pa

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        present = [c for c in dict.fromkeys(columns) if c and c in schema.names]
        return schema, parquet.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=present)
    import pandas as pd

    frame = pd.read_json(path, lines=path.endswith(".jsonl"))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    present = [c for c in dict.fromkeys(columns) if c and c in table.schema.names]
    return table.schema, iter(table.select(present).to_batches(SCAN_BATCH_ROWS))


def _check_types(schema, path: str, key: str, prompt_key: str) -> list[str]:
    import pyarrow as pa

    problems = []
    prompt = schema.field(prompt_key).type
    if not (pa.types.is_list(prompt) or pa.types.is_large_list(prompt)) or not (
        pa.types.is_struct(prompt.value_type)
        and {"role", "content"}
        <= {prompt.value_type.field(i).name for i in range(prompt.value_type.num_fields)}
    ):
        problems.append(
            f"{key}: {path} column {prompt_key} is {prompt}, but verl reads chat messages: a list of "
            "{role, content} structs, e.g. [{'role': 'user', 'content': '...'}]"
        )
    reward = schema.field(REWARD_MODEL).type
    if not pa.types.is_struct(reward) or reward.get_field_index(GROUND_TRUTH) < 0:
        problems.append(
            f"{key}: {path} column {REWARD_MODEL} is {reward}, but verl reads {REWARD_MODEL}['{GROUND_TRUTH}']: "
            f"make it a struct with a {GROUND_TRUTH} field, e.g. {{'style': 'rule', '{GROUND_TRUTH}': '42'}}"
        )
    return problems


def _bad_rows(batch, prompt_key: str) -> dict:
    """{what: boolean mask of the rows lacking it} for one record batch."""
    import pyarrow.compute as pc

    prompt = batch.column(prompt_key)
    ground_truth = pc.struct_field(batch.column(REWARD_MODEL), GROUND_TRUTH)
    return {
        "prompt": pc.fill_null(pc.equal(pc.list_value_length(prompt), 0), True),
        "ground_truth": pc.is_null(ground_truth),
        "data_source": pc.is_null(batch.column(DATA_SOURCE)),
    }


def check_model(config: DictConfig, is_poise: bool) -> list[str]:
    """The policy's config.json (decoder depth against poise.probe_layer) and its tokenizer."""
    model = config.actor_rollout_ref.model
    path = str(model.path)
    local, problem = _local_dir(path, "actor_rollout_ref.model.path")
    if problem:
        return [problem]
    problems = []
    if local is not None and is_poise:
        layers = _decoder_layers(Path(local))
        where = f"the model at {path} (num_hidden_layers in its config.json)"
        problem = probe_layer_problem(int(config.poise.probe_layer), layers, where)
        if problem:
            problems.append(problem)
    tokenizer_path = str(model.get("tokenizer_path") or path)
    tokenizer_dir, problem = _local_dir(tokenizer_path, "actor_rollout_ref.model.tokenizer_path")
    if problem:
        return problems + [problem]
    if tokenizer_dir is not None:
        problems += _check_tokenizer(config, tokenizer_dir, tokenizer_path, is_poise)
    return problems


def _local_dir(path: str, key: str) -> tuple[str | None, str | None]:
    """(local folder of a model path or None for a hub id / remote path that verl resolves, problem or None)."""
    if _is_remote(path):
        return None, None
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return local, None
    if os.path.exists(local):
        return None, f"{key}={path} is a file: point it at the model's folder (the one holding config.json)"
    if os.path.isabs(local) or path.startswith((".", "~")):
        return None, f"{key}={path} does not exist: point it at a model folder or a Hugging Face model id"
    return None, None  # "org/name": a hub id, downloaded by the workers


def _decoder_layers(folder: Path) -> int | None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    raw = json.loads(config_file.read_text())
    for section in (raw, raw.get("text_config") or {}, raw.get("llm_config") or {}):
        if isinstance(section.get("num_hidden_layers"), int):
            return section["num_hidden_layers"]
    return None


@functools.lru_cache(maxsize=4)
def _load_tokenizer(folder: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def _check_tokenizer(config: DictConfig, folder: str, shown: str, is_poise: bool) -> list[str]:
    trust = bool(config.actor_rollout_ref.model.get("trust_remote_code", False))
    try:
        tokenizer = _load_tokenizer(folder, trust)
    except Exception as error:  # noqa: BLE001 - reported with the path
        return [f"the tokenizer at {shown} cannot be loaded ({type(error).__name__}: {error})"]
    problems = []
    if not getattr(tokenizer, "chat_template", None):
        problems.append(
            f"the tokenizer at {shown} has no chat template, and verl formats every prompt with it: use a "
            "chat/instruct model or add a chat_template to its tokenizer_config.json"
        )
    if is_poise:
        from poise_verl.reasoning_split import end_of_thinking_ids

        try:  # what the trainer reads: the marker may be several tokens, but never none or unknown ones
            end_of_thinking_ids(tokenizer, config.poise.get("end_of_thinking_token"))
        except ValueError as error:
            problems.append(f"{error} (the tokenizer at {shown})")
    return problems


# verl 0.9.1's agent loop cuts a prompt longer than rollout.prompt_length (data.max_prompt_length) to its last
# tokens with one warning in a worker's log, whatever data.truncation says (its RLHFDataset no longer applies it).
TRUNCATIONS = ("error", "left", "right", "middle")


def check_prompt_lengths(config: DictConfig) -> list[str]:
    """Prompts longer than ``data.max_prompt_length`` once verl's chat template is applied, per data file.

    Every row is measured, with the tokenizer and chat template the rollout uses. Under ``data.truncation=error``
    (verl's default) an over-long prompt is a problem naming the file, the first such row and its length, unless
    ``data.filter_overlong_prompts`` drops those rows (verl's dataset does); ``truncation=left`` is what verl's
    agent loop does anyway (the count is printed); ``right`` and ``middle`` are refused, since verl would still
    cut on the left. Hub model ids and remote files are left to verl.
    """
    data = config.data
    model = config.actor_rollout_ref.model
    tokenizer_path = str(model.get("tokenizer_path") or model.path)
    folder, _ = _local_dir(tokenizer_path, "actor_rollout_ref.model.tokenizer_path")
    if folder is None:
        return []
    tokenizer = _load_tokenizer(folder, bool(model.get("trust_remote_code", False)))
    limit = int(data.max_prompt_length)
    truncation = str(data.get("truncation", "error"))
    dropping = bool(data.get("filter_overlong_prompts", False))
    prompt_key = str(data.get("prompt_key", "prompt"))
    template_kwargs = data.get("apply_chat_template_kwargs") or {}
    if OmegaConf.is_config(template_kwargs):
        template_kwargs = OmegaConf.to_container(template_kwargs, resolve=True)
    if truncation not in TRUNCATIONS:
        return [f"data.truncation={truncation}: choose one of {list(TRUNCATIONS)}"]
    problems: list[str] = []
    kept_train_rows = 0
    for key in ("train_files", "val_files"):
        for path in _paths(data.get(key)):
            if _is_remote(path):
                continue
            local = os.path.expanduser(path.removeprefix("file://"))
            lengths = _prompt_lengths(local, prompt_key, tokenizer, template_kwargs)
            over = [row for row, length in enumerate(lengths) if length > limit]
            if key == "train_files":
                kept_train_rows += len(lengths) - (len(over) if dropping else 0)
            if not over:
                continue
            first = over[0]
            where = (
                f"data.{key}: {path} row {first} (0-based; {len(over)} of {len(lengths)} rows over the limit) is a "
                f"prompt of {lengths[first]} tokens with the chat template, longer than data.max_prompt_length={limit}"
            )
            if dropping:
                print(f"poise-verl: {where}; data.filter_overlong_prompts=true drops those rows", flush=True)
            elif truncation == "left":
                print(f"poise-verl: {where}; data.truncation=left keeps the last {limit} tokens of each", flush=True)
            elif truncation == "error":
                problems.append(
                    f"{where}, and data.truncation=error. Raise data.max_prompt_length (to {max(lengths)} for "
                    "every row), set data.filter_overlong_prompts=true to drop such rows, or data.truncation=left to "
                    "keep the end of each"
                )
            else:
                problems.append(
                    f"{where}, and data.truncation={truncation}: verl 0.9.1's rollout cuts over-long prompts on the "
                    "left whatever this says. Set data.truncation=left (or error), data.filter_overlong_prompts=true, "
                    "or raise data.max_prompt_length"
                )
    batch = int(data.train_batch_size)
    if dropping and not problems and kept_train_rows < batch:
        problems.append(
            f"data.train_files: {kept_train_rows} row(s) are within data.max_prompt_length={limit} tokens, fewer than "
            f"one step's data.train_batch_size={batch}: raise data.max_prompt_length"
        )
    return problems


def _prompt_lengths(path: str, prompt_key: str, tokenizer, template_kwargs: dict) -> list[int]:
    """Token count of every row's prompt as verl's rollout builds it (chat template, generation prompt)."""
    _, batches = _open_table(path, [prompt_key])
    lengths: list[int] = []
    for batch in batches:
        conversations = batch.column(prompt_key).to_pylist()
        texts = tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=False, **template_kwargs
        )
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: one batched Rust call
        if backend is not None:
            lengths += [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return lengths


def check_reward_function(config: DictConfig) -> list[str]:
    """``reward.custom_reward_function``: the file exists and defines the named function (read, not run)."""
    function = config.reward.get("custom_reward_function") or {}
    path, name = function.get("path"), function.get("name")
    if not path or str(path).startswith("pkg://"):
        return []
    path = os.path.expanduser(str(path).removeprefix("file://"))
    if not os.path.isfile(path):
        return [
            f"reward.custom_reward_function.path={path} does not exist: point it at the .py file of your reward"
        ]
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except SyntaxError as error:
        return [f"reward.custom_reward_function.path={path} does not parse: line {error.lineno}: {error.msg}"]
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return []  # a star import may define it: left to verl
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    if name not in defined:
        functions = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        return [
            (
                f"reward.custom_reward_function.name={name!r} is not defined in {path} (its functions: {functions}): "
                "set reward.custom_reward_function.name to the function verl should call"
            )
        ]
    return []
