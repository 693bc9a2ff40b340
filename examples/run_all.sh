#!/usr/bin/env bash
# Every plug-in route, as a user would run it (CI runs this): the Python API, then the command
# line with a user's model, dataset, algorithms, graph file and mixing matrix file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$here"
small=(workers=4 samples_per_worker=40 rounds=2)
synthetic=(dataset=synthetic workers=6 samples_per_worker=30 rounds=3)

echo "== Python API: your own PyTorch module, Datasets and networkx graph (README's script)"
python own_pytorch.py
echo "== Python API: own model (BatchNorm, Dropout), tensors, networkx graph, resume"
python api_batchnorm.py "$tmp/api"
echo "== model plug-in"
repgossip run --quiet --set model=mymodels:tiny "${small[@]}" --out "$tmp/model"
echo "== dataset plug-in"
repgossip run --quiet --set dataset=mydata:blobs partition=shards "${small[@]}" --out "$tmp/data"
echo "== loss and metric plug-ins, with Adam and gradient clipping"
repgossip run --quiet --set dataset=mydata:blobs loss=myobjectives:smoothed \
    metric=myobjectives:macro_f1 optimizer=adam lr=0.01 clip_norm=10 "${small[@]}" --out "$tmp/objectives"
echo "== algorithm plug-in with extra state and a gradient hook"
repgossip run --quiet --set algorithm=proxdeprl:ProxDePRL "${synthetic[@]}" --out "$tmp/prox"
echo "== algorithm plug-in with messages of its own"
repgossip run --quiet --set algorithm=sparsegossip:SparseGossip "${synthetic[@]}" --out "$tmp/sparse"
echo "== graph and mixing matrix files"
python make_graph.py "$tmp/graph"
repgossip topology "$tmp/graph/adjacency.npy" --workers 16 --set mixing="$tmp/graph/W.npy"
repgossip run --quiet --set workers=16 samples_per_worker=20 rounds=2 \
    topology="$tmp/graph/adjacency.npy" mixing="$tmp/graph/W.npy" --out "$tmp/graph/run"
echo "all examples ran"
