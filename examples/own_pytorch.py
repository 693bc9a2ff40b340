"""DePRL on your own PyTorch code: your nn.Module (its own forward, its head named `fc`), your
Datasets and a networkx graph. README.md shows this file as it is; examples/run_all.sh runs it."""

import networkx as nx
import torch
from torch import nn
from torch.utils.data import TensorDataset

import repgossip


class Net(nn.Module):  # torchvision-style: a flatten in forward, the classifier named fc
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(torch.flatten(x, 1)))


gen = torch.Generator().manual_seed(0)
centres = torch.randn(4, 20, generator=gen) * 0.4
labels = torch.randint(0, 4, (1200,), generator=gen)
points = centres[labels] + torch.randn(1200, 20, generator=gen)
train, test = (
    TensorDataset(points[:1000], labels[:1000]),
    TensorDataset(points[1000:], labels[1000:]),
)

result = repgossip.run(
    {"algorithm": "deprl", "rounds": 10, "lr": 0.05},
    model=Net(),
    head="fc",
    data=(train, test),
    graph=nx.cycle_graph(8),
)
print(f"mean accuracy over 8 workers: {result.summary['test_acc_mean']:.3f}")
Net().load_state_dict(result.worker_state(3))  # worker 3's trained model, in your own module
