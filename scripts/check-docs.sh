#!/usr/bin/env bash
# Builds the RedisPubSub module's documentation with DocC and fails on any warning (a broken ``symbol`` link, a
# wrong disambiguation), and on any public declaration without a `///` comment.
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT="${SWIFT:-swift}"

if command -v docc >/dev/null 2>&1; then
    DOCC=(docc)
elif command -v xcrun >/dev/null 2>&1 && xcrun --find docc >/dev/null 2>&1; then
    DOCC=(xcrun docc)
elif [ -x "$(dirname "$(command -v "$SWIFT")")/docc" ]; then
    DOCC=("$(dirname "$(command -v "$SWIFT")")/docc")
else
    echo "check-docs: docc not found (it ships with the Swift toolchain); skipped." >&2
    exit 0
fi

work=".build/docs-check"
# The symbol graphs stay: a second run whose build has nothing to do emits none, and reuses them.
rm -rf "$work/graphs" "$work/archive"
mkdir -p "$work/all" "$work/graphs"
"$SWIFT" build --target RedisPubSub \
    -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc "$PWD/$work/all"
cp "$work"/all/RedisPubSub*.symbols.json "$work/graphs/"
"${DOCC[@]}" convert --additional-symbol-graph-dir "$work/graphs" \
    --fallback-display-name RedisPubSub --fallback-bundle-identifier swift-redis-pubsub.RedisPubSub \
    --output-dir "$work/archive" --warnings-as-errors

# Every public declaration carries a `///` comment (attributes may sit between the two).
missing=$(awk '
    FNR == 1 { documented = 0 }
    /^[[:space:]]*\/\/\// { documented = 1; next }
    /^[[:space:]]*@[A-Za-z]/ && $0 !~ /public/ { next }
    /(^|[[:space:]@)])public[[:space:]]/ && $0 !~ /public import/ {
        if (!documented) print FILENAME ":" FNR ": " $0
    }
    { documented = 0 }
' $(find Sources/RedisPubSub -name '*.swift'))
if [ -n "$missing" ]; then
    echo "check-docs: public declarations without a /// comment:" >&2
    echo "$missing" >&2
    exit 1
fi
echo "check-docs: DocC built without warnings; every public declaration is documented."
