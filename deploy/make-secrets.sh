#!/bin/sh
# Random secrets for docker-compose.yml, one file each in ./secrets (mode 0600); an existing
# file is kept, so running it again changes nothing. Run from the repository root.
set -eu
umask 077
mkdir -p secrets
for name in secret_key postgres_password minio_root_password minio_app_password metrics_token; do
  [ -s "secrets/$name" ] || openssl rand -hex 32 > "secrets/$name"
done
[ -s secrets/flower_auth ] || printf 'admin:%s\n' "$(openssl rand -hex 16)" > secrets/flower_auth
echo "secrets in $(pwd)/secrets: $(ls secrets | tr '\n' ' ')"
