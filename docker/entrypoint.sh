#!/usr/bin/env bash
# The image's entrypoint. Arguments that look like Hydra overrides (`+recipe=...`, `key=value`, `--cfg ...`) run
# `python -m poise_verl.main` with them; anything else is executed as a command (bash, ray start, python ...).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    exec python -m poise_verl.main --help
fi
case "$1" in
    +* | --cfg | --help | -h | --info | --resolve | *=*)
        exec python -m poise_verl.main "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
