#!/bin/sh
# CANN's environment (library paths, pyACL or the TF adapter on PYTHONPATH), then the command.
set -e
for env in /usr/local/Ascend/nnrt/set_env.sh /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnae/set_env.sh; do
    if [ -f "$env" ]; then
        # shellcheck disable=SC1090
        . "$env"
        break
    fi
done
exec "$@"
