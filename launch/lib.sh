# Shared by launch/gpu.sh, launch/slurm.sh and launch/tpu_pod.sh (sourced, not run).
# shellcheck shell=bash

# The repository root (absolute), whatever the caller's directory.
LAUNCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0

# quote_word WORD: WORD as is when it is only safe characters, else in POSIX single quotes
# (each ' written '\''), so the result pastes into bash, zsh or sh alike.
quote_word() {
  case $1 in
    "" | *[!A-Za-z0-9_@%+=:,./-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# quote_cmd ARG...: one line, every argument quoted (quote_word), ready to paste.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote_word "$arg")"
  done
  printf '%s\n' "$out"
}

# run_cmd ARG...: runs the command, or under --dry-run prints it (quote_cmd) instead.
run_cmd() {
  if [ "$DRY_RUN" = 1 ]; then
    quote_cmd "$@"
  else
    "$@"
  fi
}

# usage_error MESSAGE: the usage text (the caller's USAGE) and exit status 2.
usage_error() {
  printf '%s: %s\n%s\n' "$(basename "$0")" "$1" "$USAGE" >&2
  exit 2
}

# need_value OPTION COUNT: an option given without its value is a usage error.
need_value() {
  [ "$2" -ge 2 ] || usage_error "$1 needs a value"
}

# check_env_assignment KEY=VALUE: KEY must be a shell variable name.
check_env_assignment() {
  case $1 in
    [A-Za-z_]*=*) local key=${1%%=*}
      case $key in *[!A-Za-z0-9_]*) usage_error "--env wants KEY=VALUE, got: $1" ;; esac ;;
    *) usage_error "--env wants KEY=VALUE, got: $1" ;;
  esac
}

# local_install VENV EXTRA PYTHON: creates VENV with PYTHON if it has no interpreter, then
# `pip install -e REPO[EXTRA]` unless VENV records an install of this same pyproject.toml
# with this extra (a copy of it, compared with cmp). Idempotent: a second call runs nothing.
local_install() {
  local venv=$1 extra=$2 python=$3
  local stamp="$venv/.lottery_jax-$extra.pyproject.toml"
  if [ ! -x "$venv/bin/python" ]; then
    run_cmd "$python" -m venv "$venv"
  fi
  if ! cmp -s "$LAUNCH_REPO/pyproject.toml" "$stamp"; then
    run_cmd "$venv/bin/pip" install -q -e "$LAUNCH_REPO[$extra]"
    run_cmd cp "$LAUNCH_REPO/pyproject.toml" "$stamp"
  fi
}
