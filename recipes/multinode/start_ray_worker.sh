#!/usr/bin/env bash
# Join this node to a running Ray head (start_ray_head.sh), giving Ray its GPUs.
#
#   bash recipes/multinode/start_ray_worker.sh HEAD_IP:6379 [--block] [more `ray start` args]
#
# Environment: NUM_GPUS (default: the count nvidia-smi lists), NUM_CPUS, NODE_IP, as in start_ray_head.sh.
# Export NCCL_*/GLOO_SOCKET_IFNAME, HF_HOME and W&B credentials before starting Ray: its workers inherit them.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 HEAD_IP:PORT [ray start args ...]" >&2
    exit 2
fi
head_address=$1
shift

NUM_GPUS=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NODE_IP=${NODE_IP:-$(hostname -I | awk '{print $1}')}

if [[ "${NUM_GPUS}" -lt 1 ]]; then
    echo "start_ray_worker.sh: no GPU found on $(hostname); set NUM_GPUS if nvidia-smi is not on PATH" >&2
    exit 1
fi

echo "Ray worker ${NODE_IP} with ${NUM_GPUS} GPU(s) joining ${head_address}"
exec ray start \
    --address="${head_address}" \
    --node-ip-address="${NODE_IP}" \
    --num-gpus="${NUM_GPUS}" \
    ${NUM_CPUS:+--num-cpus="${NUM_CPUS}"} \
    "$@"
