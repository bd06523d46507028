#!/usr/bin/env bash
# Downloads, verifies and extracts COCO 2014 and 2017 (images + instance annotations) into the
# layout mrcnn/data/catalog.py reads under the data root (`data.root` / $MRCNN_DATA):
#
#   ROOT/coco/annotations/instances_{train,val}{2014,2017}.json
#   ROOT/coco/{train2014,val2014,train2017,val2017}/*.jpg
#
# Usage: bash launch/download_coco.sh [--only 2014|2017] [--delete-zips] [DIR]
#   DIR            the COCO folder, ROOT/coco (default: $MRCNN_DATA/coco, else datasets/coco);
#                  train with MRCNN_DATA=ROOT or --config.data.root=ROOT.
#   --only YEAR    fetch one release (2017 alone also serves coco_2014_minival = val2017).
#   --delete-zips  remove each archive once it is extracted (saves ~26 GB).
# Environment:
#   MRCNN_COCO_URL  base URL (default http://images.cocodataset.org); archives are fetched from
#                   BASE/zips/<name>.zip and BASE/annotations/<name>.zip. file://... or a plain
#                   folder path also work (a local mirror, the tests).
#   MRCNN_COCO_MD5  a file of "md5  name.zip" lines replacing the built-in table (tests);
#                   an md5 of "-" means "no checksum known": the archive is checked with unzip -t.
#
# Idempotent: an archive already extracted (DIR/.done/<name>.zip holds its md5) is skipped
# without downloading; a downloaded archive whose checksum matches is not fetched again; a
# partial download resumes. A checksum mismatch deletes the archive and fails loudly.
# About 45 GB of downloads for both releases (2014: 13 + 6.2 + 0.24 GB; 2017: 18 + 0.8 + 0.24).
set -euo pipefail

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

ONLY=""
DELETE_ZIPS=0
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY="${2:-}"; shift 2 ;;
    --only=*) ONLY="${1#--only=}"; shift ;;
    --delete-zips) DELETE_ZIPS=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "download_coco.sh: unknown option $1" >&2; usage 2 ;;
    *) [ -z "$DIR" ] || { echo "download_coco.sh: one DIR only" >&2; exit 2; }; DIR="$1"; shift ;;
  esac
done
case "$ONLY" in ""|2014|2017) ;; *) echo "download_coco.sh: --only takes 2014 or 2017" >&2; exit 2 ;; esac
DIR="${DIR:-${MRCNN_DATA:-datasets}/coco}"
BASE="${MRCNN_COCO_URL:-http://images.cocodataset.org}"
BASE="${BASE%/}"

for tool in unzip md5sum; do
  command -v "$tool" >/dev/null || { echo "download_coco.sh: needs $tool" >&2; exit 1; }
done

# md5 of the official archives. They equal the S3 ETags of images.cocodataset.org and the
# checksums that torchvision-style loaders, PaddleDetection and LAVIS pin.
OFFICIAL_MD5="
0da8c0bd3d6becc4dcb32757491aca88  train2014.zip
a3d79f5ed8d289b7a7554ce06a5782b3  val2014.zip
0a379cfc70b0e71301e0f377548639bd  annotations_trainval2014.zip
cced6f7f71b7629ddf16f17bbcfab6b2  train2017.zip
442b8da7639aecaf257c1dceb8ba8c80  val2017.zip
f4bbac642086de4f52a3fdda2de5fa2c  annotations_trainval2017.zip
"
if [ -n "${MRCNN_COCO_MD5:-}" ]; then
  [ -f "$MRCNN_COCO_MD5" ] || { echo "download_coco.sh: MRCNN_COCO_MD5=$MRCNN_COCO_MD5 not found" >&2; exit 1; }
  MD5_TABLE="$(cat "$MRCNN_COCO_MD5")"
else
  MD5_TABLE="$OFFICIAL_MD5"
fi

expected_md5() {  # name -> md5, "-" or empty
  printf '%s\n' "$MD5_TABLE" | awk -v n="$1" '$2 == n { print $1; exit }'
}

COCO="${DIR%/}"
DL="$COCO/downloads"
DONE="$COCO/.done"
mkdir -p "$DL" "$DONE"

fetch() {  # url dest: resumes a partial download; file:// and plain paths are copied
  local url="$1" dest="$2"
  case "$url" in
    http://*|https://*|ftp://*)
      # -C - resumes a partial file; a stale or complete .part makes the server refuse the
      # range, so start over once.
      curl -fL --retry 5 --retry-delay 5 -C - -o "$dest.part" "$url" \
        || { rm -f "$dest.part"; curl -fL --retry 5 --retry-delay 5 -o "$dest.part" "$url"; } ;;
    file://*)
      cp -f "${url#file://}" "$dest.part" ;;
    *)
      cp -f "$url" "$dest.part" ;;
  esac
  mv -f "$dest.part" "$dest"
}

verify() {  # zip name -> 0 when the archive is good
  local zip="$1" name="$2" want got
  want="$(expected_md5 "$name")"
  if [ -n "$want" ] && [ "$want" != "-" ]; then
    got="$(md5sum "$zip" | cut -d' ' -f1)"
    if [ "$got" != "$want" ]; then
      echo "download_coco.sh: CHECKSUM MISMATCH for $name: expected md5 $want, got $got" >&2
      return 1
    fi
  else
    echo "[coco] no md5 known for $name: testing the archive with unzip -t"
    if ! unzip -tq "$zip" >/dev/null 2>&1; then
      echo "download_coco.sh: CORRUPT ARCHIVE $name (unzip -t failed)" >&2
      return 1
    fi
  fi
}

extract() {  # zip name: unzip beside the target, then move into place
  local zip="$1" name="$2" tmp entry target
  tmp="$COCO/.extract-${name%.zip}"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! unzip -q -o "$zip" -d "$tmp"; then
    rm -rf "$tmp"
    echo "download_coco.sh: extracting $name failed" >&2
    return 1
  fi
  for entry in "$tmp"/*; do
    [ -e "$entry" ] || continue
    target="$COCO/$(basename "$entry")"
    if [ "$(basename "$entry")" = "annotations" ] && [ -d "$target" ]; then
      # Both releases ship an annotations/ folder: merge the files.
      mv -f "$entry"/* "$target"/
    else
      rm -rf "$target"  # a leftover of an interrupted extraction (no .done marker)
      mv "$entry" "$target"
    fi
  done
  rm -rf "$tmp"
}

get() {  # subdir name: one archive, start to end
  local sub="$1" name="$2" zip="$DL/$2" want
  want="$(expected_md5 "$name")"
  if [ -f "$DONE/$name" ] && [ "$(cat "$DONE/$name")" = "${want:--}" ]; then
    echo "[coco] $name: already extracted, skipping"
    return 0
  fi
  if [ -f "$zip" ] && verify "$zip" "$name" 2>/dev/null; then
    echo "[coco] $name: already downloaded and verified"
  else
    echo "[coco] $name: downloading $BASE/$sub/$name"
    fetch "$BASE/$sub/$name" "$zip"
    if ! verify "$zip" "$name"; then
      rm -f "$zip"
      echo "download_coco.sh: deleted the bad $zip; run again to re-download" >&2
      exit 1
    fi
  fi
  echo "[coco] $name: extracting into $COCO"
  extract "$zip" "$name"
  echo "${want:--}" > "$DONE/$name"
  if [ "$DELETE_ZIPS" = 1 ]; then rm -f "$zip"; fi
}

for year in 2014 2017; do
  if [ -n "$ONLY" ] && [ "$ONLY" != "$year" ]; then continue; fi
  get annotations "annotations_trainval$year.zip"
  get zips "val$year.zip"
  get zips "train$year.zip"
done

for year in 2014 2017; do
  if [ -n "$ONLY" ] && [ "$ONLY" != "$year" ]; then continue; fi
  for f in "annotations/instances_train$year.json" "annotations/instances_val$year.json" \
           "train$year" "val$year"; do
    [ -e "$COCO/$f" ] || { echo "download_coco.sh: expected $COCO/$f after extraction" >&2; exit 1; }
  done
done
ROOT_HINT="$(dirname "$COCO")"
if [ "$(basename "$COCO")" != coco ]; then
  echo "[coco] note: the catalog looks for DATA_ROOT/coco; link or move $COCO there" >&2
fi
echo "[coco] ready in $COCO (train with MRCNN_DATA=$ROOT_HINT or --config.data.root=$ROOT_HINT)"
