#!/usr/bin/env bash
# Start the Ray head on this node (run it first, on one node of the cluster).
#
#   bash recipes/multinode/start_ray_head.sh            # daemonised; `ray stop` ends it
#   bash recipes/multinode/start_ray_head.sh --block    # stays in the foreground (Slurm steps, containers)
#
# Extra arguments go to `ray start`. Environment:
#   NUM_GPUS            GPUs this node gives Ray (default: the count nvidia-smi lists)
#   NUM_CPUS            CPUs this node gives Ray (default: Ray's own detection)
#   NODE_IP             the address the other nodes reach this one at (default: first of `hostname -I`)
#   RAY_PORT            GCS port the workers join (default 6379)
#   RAY_DASHBOARD_PORT  dashboard and job-submission port for submit.sh (default 8265)
# Ray's worker processes inherit this shell's environment: export NCCL_*/GLOO_SOCKET_IFNAME, HF_HOME and
# WANDB_API_KEY (or run `wandb login`) here, on every node, before starting Ray.
set -euo pipefail

RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
NUM_GPUS=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NODE_IP=${NODE_IP:-$(hostname -I | awk '{print $1}')}

if [[ "${NUM_GPUS}" -lt 1 ]]; then
    echo "start_ray_head.sh: no GPU found on $(hostname); set NUM_GPUS if nvidia-smi is not on PATH" >&2
    exit 1
fi

echo "Ray head: ${NODE_IP}:${RAY_PORT} with ${NUM_GPUS} GPU(s); jobs: RAY_ADDRESS=http://${NODE_IP}:${RAY_DASHBOARD_PORT}"
exec ray start --head \
    --node-ip-address="${NODE_IP}" \
    --port="${RAY_PORT}" \
    --dashboard-host=0.0.0.0 \
    --dashboard-port="${RAY_DASHBOARD_PORT}" \
    --num-gpus="${NUM_GPUS}" \
    ${NUM_CPUS:+--num-cpus="${NUM_CPUS}"} \
    "$@"
