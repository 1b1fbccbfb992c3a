#!/usr/bin/env bash
# Writes a single-layer, FROM-scratch container image as an OCI archive (an
# OCI image layout in a tar file, with a docker-save manifest.json beside it
# so older `docker load` reads it too), without a container daemon or a
# registry. The same inputs give the same bytes, so the same digest: every
# timestamp is the epoch, owners are 0, entries are sorted, gzip stores no
# name or time.
#
#   tools/image.sh --binary FILE --path /usr/local/bin/NAME --name REPO:TAG \
#       --out FILE.tar [--ca-bundle FILE] [--user UID:GID] [--port N] [--cmd ARG]...
#
# Prints the manifest digest (sha256:...) and writes it to FILE.tar.digest.
# The image's entrypoint is --path; --cmd arguments are its default command.
set -euo pipefail

binary="" path="" name="" out="" ca_bundle="" user="" port=""
cmd=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--binary) binary=$2; shift 2 ;;
	--path) path=$2; shift 2 ;;
	--name) name=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--ca-bundle) ca_bundle=$2; shift 2 ;;
	--user) user=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--cmd) cmd+=("$2"); shift 2 ;;
	*) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[[ -n $binary && -n $path && -n $name && -n $out ]] \
	|| { echo "usage: image.sh --binary FILE --path IN_IMAGE_PATH --name REPO:TAG --out FILE.tar [...]" >&2; exit 2; }
[[ -f $binary ]] || { echo "image.sh: $binary not found" >&2; exit 1; }
[[ -z $ca_bundle || -f $ca_bundle ]] || { echo "image.sh: CA bundle $ca_bundle not found (Debian: apt-get install ca-certificates)" >&2; exit 1; }
# A dynamically linked binary would start nowhere: scratch has no loader
# (the interpreter's path sits in the first page of an ELF file).
if head -c 4096 "$binary" | LC_ALL=C grep -q --binary-files=text 'ld-linux'; then
	echo "image.sh: $binary is dynamically linked; a scratch image needs a static binary" >&2
	exit 1
fi

# Fully qualified, as containerd names images: chatworkspace-operator:0.1.0
# is docker.io/library/chatworkspace-operator:0.1.0.
full_name=$name
first=${name%%/*}
if [[ $name != */* ]]; then
	full_name="docker.io/library/$name"
elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
	full_name="docker.io/$name"
fi
tag=${name##*:}
[[ $tag != "$name" && $tag != */* ]] || { echo "image.sh: --name needs a tag (REPO:TAG)" >&2; exit 2; }
repo_tag=${name}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A file's mode must not depend on the caller's umask.
umask 022

# Deterministic tar of the listed paths under $1 (no recursion: every
# directory is listed).
det_tar() {
	local dir=$1 file=$2
	shift 2
	tar --create --file="$file" --directory="$dir" --no-recursion --sort=name --format=gnu \
		--mtime=@0 --owner=0 --group=0 --numeric-owner "$@"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# A JSON string (the inputs here are paths and arguments, never binary).
json_str() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

rootfs="$work/rootfs"
entries=()
add_file() { # SOURCE IN_IMAGE_PATH MODE
	local target="$rootfs$2" parent rel
	rel=${2#/}
	parent=$(dirname "$rel")
	while [[ $parent != . ]]; do
		entries+=("$parent")
		parent=$(dirname "$parent")
	done
	mkdir -p "$(dirname "$target")"
	cp "$1" "$target"
	chmod "$3" "$target"
	entries+=("$rel")
}
mkdir -p "$rootfs"
add_file "$binary" "$path" 0555
[[ -z $ca_bundle ]] || add_file "$ca_bundle" /etc/ssl/certs/ca-certificates.crt 0444
find "$rootfs" -type d -exec chmod 0755 {} +
mapfile -t entries < <(printf '%s\n' "${entries[@]}" | sort -u)

layer_tar="$work/layer.tar"
det_tar "$rootfs" "$layer_tar" "${entries[@]}"
diff_id=$(sha "$layer_tar")
gzip -n -9 "$layer_tar"
layer="$layer_tar.gz"

blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs"
layer_digest=$(sha "$layer")
mv "$layer" "$blobs/$layer_digest"

config_json="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{"
[[ -z $user ]] || config_json+="\"User\":$(json_str "$user"),"
[[ -z $port ]] || config_json+="\"ExposedPorts\":{\"$port/tcp\":{}},"
config_json+="\"Entrypoint\":[$(json_str "$path")]"
if [[ ${#cmd[@]} -gt 0 ]]; then
	config_json+=",\"Cmd\":["
	sep=""
	for arg in "${cmd[@]}"; do config_json+="$sep$(json_str "$arg")"; sep=","; done
	config_json+="]"
fi
config_json+="},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},"
config_json+="\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"tools/image.sh\"}]}"
printf '%s' "$config_json" >"$work/config.json"
config_digest=$(sha "$work/config.json")
config_size=$(size "$work/config.json")
mv "$work/config.json" "$blobs/$config_digest"

manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
manifest+="\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},"
manifest+="\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_digest\",\"size\":$(size "$blobs/$layer_digest")}]}"
printf '%s' "$manifest" >"$work/manifest"
manifest_digest=$(sha "$work/manifest")
manifest_size=$(size "$work/manifest")
mv "$work/manifest" "$blobs/$manifest_digest"

layout="$work/layout"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"io.containerd.image.name\":$(json_str "$full_name"),\"org.opencontainers.image.ref.name\":$(json_str "$tag")}}]}" >"$layout/index.json"
printf '%s' "[{\"Config\":\"blobs/sha256/$config_digest\",\"RepoTags\":[$(json_str "$repo_tag")],\"Layers\":[\"blobs/sha256/$layer_digest\"]}]" >"$layout/manifest.json"

mkdir -p "$(dirname "$out")"
det_tar "$layout" "$out.tmp" oci-layout index.json manifest.json blobs blobs/sha256 \
	"blobs/sha256/$layer_digest" "blobs/sha256/$config_digest" "blobs/sha256/$manifest_digest"
mv "$out.tmp" "$out"
echo "sha256:$manifest_digest" >"$out.digest"
echo "sha256:$manifest_digest"
