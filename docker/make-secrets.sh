#!/usr/bin/env bash
# Writes the secrets that docker/compose.yaml mounts, as random values, into
# docker/secrets/ (or the folder given). A file that exists is kept: delete one
# and run this again for a new value. mlflow_credentials (MLflow's client
# login, for the Ray nodes) is rewritten from mlflow_admin_password each time.
#   bash docker/make-secrets.sh [FOLDER]
# MLflow creates its admin with the password it finds at its first start; a
# later change of mlflow_admin_password does not change that user (drop the
# mlflow-auth volume, or change it through MLflow's API, too).
set -euo pipefail

folder=${1:-"$(dirname "$0")/secrets"}
umask 077
mkdir -p "$folder"
# The folder is yours alone. Compose bind-mounts each file as it is, and the
# containers' users (ray, uid 1000; postgres, uid 999) must read it, so the
# files themselves are world-readable: only the folder keeps others out.
chmod 700 "$folder"

random() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

keep_or_write() {  # NAME VALUE: write FOLDER/NAME unless it exists
    [ -e "$folder/$1" ] || printf '%s' "$2" > "$folder/$1"
    chmod 644 "$folder/$1"
}

keep_or_write ray_auth_token "$(random)"
keep_or_write mlflow_admin_password "$(random)"
keep_or_write mlflow_flask_secret_key "$(random)"
keep_or_write postgres_password "$(random)"
# The user name is compose.yaml's MLFLOW_AUTH_ADMIN_USERNAME.
printf '[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = %s\n' \
    "$(cat "$folder/mlflow_admin_password")" > "$folder/mlflow_credentials"
chmod 644 "$folder/mlflow_credentials"
echo "secrets in $folder: $(cd "$folder" && ls | tr '\n' ' ')"
