# Sourced by scripts/demo.sh and scripts/study.sh: their own settings live in the run config
# as TOML comment lines, `#@TAG key = value` (fedps-shard / fedps-client / fedps-ctl ignore
# them), and TAG_KEY in the environment overrides a line.
#
# config_setting TAG KEY DEFAULT: that value for KEY in $CONFIG, else DEFAULT.
config_setting() {
  local tag=$1 key=$2 dflt=$3 v
  local env="${tag^^}_${key^^}"
  if [[ -n "${!env+x}" ]]; then echo "${!env}"; return; fi
  v=$(sed -n "s/^#@$tag[[:space:]]\+$key[[:space:]]*=[[:space:]]*\([^#[:space:]]*\).*/\1/p" "$CONFIG" | head -1)
  echo "${v:-$dflt}"
}
