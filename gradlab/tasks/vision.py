"""Image classification on torchvision's MNIST, Fashion-MNIST and CIFAR-10.

The files are read by torchvision's own dataset classes; their decoded `.data` and
`.targets` go to the device whole (no per-item transforms), scaled to [0, 1] and
standardised per channel with the training split's mean and std. The test split is the
held-out set. Downloads happen only in prepare(); offline, missing files become one line
naming the folder and the files to place there.
"""

from __future__ import annotations

import math
import os

import torch

from gradlab.errors import bad
from gradlab.tasks import TaskSpec
from gradlab.tasks._base import Stored


class _Torchvision(Stored):
    """A torchvision data set: subclasses name the class and say where its files live."""

    dataset: str  # class name in torchvision.datasets
    shape: tuple  # (channels, height, width) of one image

    def __init__(self, root: str = "data", download: bool = True):
        if not isinstance(root, str) or not root:
            raise bad("task.root", root, "a folder path for the data sets")
        if not isinstance(download, bool):
            raise bad("task.download", download, "true or false")
        self.root, self.download = root, download
        # all three have 10 roughly balanced classes: guessing scores log(10)
        self.spec = TaskSpec("image", self.shape, "classes", 10, baseline=math.log(10))

    def _class(self):
        import torchvision.datasets  # slow import, only when data is touched

        return getattr(torchvision.datasets, self.dataset)

    def _open(self, **kwargs):
        return self._class()(self.root, **kwargs)

    def _layout(self) -> tuple:
        """(folder, file names) that torchvision reads."""
        raise NotImplementedError

    def _images(self, data) -> torch.Tensor:
        """The dataset's `.data` as a uint8 tensor (N, C, H, W)."""
        raise NotImplementedError

    def prepare(self) -> None:
        folder, files = self._layout()
        if all(os.path.isfile(os.path.join(folder, f)) for f in files):
            return
        reason = "or set task.download=true to fetch them"
        if self.download:
            try:
                self._open(download=True)
                return
            except (OSError, RuntimeError) as err:  # no network, server refused, bad checksum
                # torchvision's message spans lines and mirrors; its last line names the cause
                cause = [line for line in str(err).splitlines() if line.strip()][-1:] or [type(err).__name__]
                reason = f"task.download=true, but the download failed: {cause[0].strip()[-100:]}"
        raise bad(
            "task.root",
            self.root,
            f"{self.dataset} not found: place {', '.join(files)} in {folder} ({reason})",
        )

    def load(self, device) -> None:
        splits = []
        for train in (True, False):
            ds = self._open(train=train)
            x = self._images(ds.data).to(device).float() / 255
            splits.append((x, torch.as_tensor(ds.targets, dtype=torch.long).to(device)))
        mean = splits[0][0].mean((0, 2, 3), keepdim=True)
        std = splits[0][0].std((0, 2, 3), keepdim=True)
        for x, _ in splits:
            x.sub_(mean).div_(std)  # in place: CIFAR-10 is 600 MB as float32
        self.train, self.test = splits


class _Idx(_Torchvision):
    """MNIST-format sets: idx-ubyte files in <root>/<Class>/raw."""

    def _layout(self) -> tuple:
        # torchvision reads the unpacked files; it unpacks the .gz archives on download
        names = [name.removesuffix(".gz") for name, _ in self._class().resources]
        return os.path.join(self.root, self.dataset, "raw"), names

    def _images(self, data) -> torch.Tensor:
        return data.unsqueeze(1)


class MNIST(_Idx):
    """Handwritten digits, LeCun et al. 1998: 60,000 train / 10,000 test, 28x28 grey."""

    dataset = "MNIST"
    shape = (1, 28, 28)


class FashionMNIST(_Idx):
    """Clothing images, Xiao et al. 2017: MNIST's format, harder classes."""

    dataset = "FashionMNIST"
    shape = (1, 28, 28)


class CIFAR10(_Torchvision):
    """Krizhevsky 2009: 50,000 train / 10,000 test colour images, 32x32, 10 classes."""

    dataset = "CIFAR10"
    shape = (3, 32, 32)

    def _layout(self) -> tuple:
        files = self._class()
        names = [name for name, _ in files.train_list + files.test_list] + [files.meta["filename"]]
        return os.path.join(self.root, files.base_folder), names

    def _images(self, data) -> torch.Tensor:
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()  # stored HWC
