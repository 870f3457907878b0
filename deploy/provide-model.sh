#!/bin/sh
# Installs the model baked into the runtime image (/opt/imgbatch/models, built by the Dockerfile's
# `export` stage) into the directory of IMGBATCH_MODEL, the shared `models` volume in compose.
# A model already there is kept (it may be your own); `--force` replaces it. Every replacement is
# a copy next to the target and a rename, so workers never see a partial file.
set -eu

src_dir=${IMGBATCH_BUNDLED_MODELS:-/opt/imgbatch/models}
model=${IMGBATCH_MODEL:?IMGBATCH_MODEL must name the model file}
dest_dir=$(dirname "$model")
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: imgbatch-provide-model [--force]" >&2; exit 2 ;;
esac

mkdir -p "$dest_dir"
for src in "$src_dir"/*; do
  [ -f "$src" ] || continue
  dest="$dest_dir/$(basename "$src")"
  if [ -e "$dest" ] && [ "$force" -eq 0 ]; then
    if cmp -s "$src" "$dest"; then
      echo "up to date: $dest"
    else
      echo "kept $dest: it differs from the image's model; run with --force to replace it"
    fi
    continue
  fi
  cp "$src" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
  echo "installed $dest"
done

if [ ! -f "$model" ]; then
  echo "error: no model at $model (the image bundles: $(ls "$src_dir" | tr '\n' ' '))" >&2
  exit 1
fi
