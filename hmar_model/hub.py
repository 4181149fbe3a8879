"""Official weights by name: "hmar-d16", "var-d30", "vqvae", ... → a file in the Hugging Face cache.

    path = hub.resolve("hmar-d16")      # nvidia/HMAR hmar-d16.pth, downloaded once into the standard cache
    path = hub.resolve("my/model.pth")  # an existing local file is returned as is

The files come from the authors' repositories (``OFFICIAL``) through ``huggingface_hub.hf_hub_download``, so the
standard cache and its environment variables apply: ``HF_HOME`` / ``HF_HUB_CACHE`` (where), ``HF_HUB_OFFLINE=1``
(never touch the network), ``HF_TOKEN`` (gated repositories). A file already in the cache is used without any
network request; otherwise it is downloaded (with huggingface_hub's progress bar). When it can be neither found
nor fetched the error names the repository, the file and the command that fetches it.

huggingface_hub is imported when a name is first resolved, so loading local files never needs it.
"""
from __future__ import annotations

import os
from typing import NamedTuple


class OfficialFile(NamedTuple):
    repo: str  # Hugging Face model repository
    filename: str  # file at the repository's root
    licence: str  # short statement of the terms (README "Models" has the details)


_HMAR_TERMS = "NVIDIA licence on nvidia/HMAR: research and non-commercial use only"
_VAR_TERMS = "FoundationVision/var: terms not stated in the repository; check before redistributing"

# The 256 px checkpoints the models here load (VAR-d36, 512 px with shared AdaLN, is not supported).
OFFICIAL = {
    **{f"hmar-d{d}": OfficialFile("nvidia/HMAR", f"hmar-d{d}.pth", _HMAR_TERMS) for d in (16, 20, 24, 30)},
    **{f"var-d{d}": OfficialFile("FoundationVision/var", f"var_d{d}.pth", _VAR_TERMS) for d in (16, 20, 24, 30)},
    "vqvae": OfficialFile("FoundationVision/var", "vae_ch160v4096z32.pth", _VAR_TERMS),
}
_BY_FILENAME = {f.filename: name for name, f in OFFICIAL.items()}


def download_command(name: str) -> str:
    """The shell command that puts an official file into the cache (``hf``; ``huggingface-cli`` before 0.34)."""
    f = OFFICIAL[name]
    return f"hf download {f.repo} {f.filename}"


def is_official_name(source) -> bool:
    return isinstance(source, str) and source in OFFICIAL


def resolve(source):
    """A local path for ``source``: an official name → its cached (or freshly downloaded) file; an existing
    file → itself. Anything else (a mapping, a missing path) is returned unchanged for the reader to report."""
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        return source
    if is_official_name(source):
        return fetch(source)
    return source


def unknown_source_hint(path: str) -> str:
    """For a path that does not exist: the official name the user may have meant, or the list of names."""
    base = os.path.basename(path)
    name = _BY_FILENAME.get(base) or (base if base in OFFICIAL else None)
    if name:
        f = OFFICIAL[name]
        return (f"; to use the official file, pass the name {name!r} ({f.filename} from {f.repo}, downloaded once "
                "into the Hugging Face cache)")
    return f"; official weights are available by name: {', '.join(OFFICIAL)}"


def fetch(name: str) -> str:
    """The cached path of official file ``name``, downloading it when it is not cached and the network is allowed.

    Raises ValueError naming the repository, the file and the command that fetches it when that fails.
    """
    import huggingface_hub
    from huggingface_hub import constants, errors

    f = OFFICIAL[name]
    try:  # the cache first: no request at all when the file is there
        return huggingface_hub.hf_hub_download(f.repo, f.filename, local_files_only=True)
    except errors.LocalEntryNotFoundError:
        pass
    where = f"{f.filename} from the Hugging Face repository {f.repo}"
    fetch_it = (f"fetch it with `{download_command(name)}` (or `huggingface-cli download {f.repo} {f.filename}`), "
                f"or pass a local path to the file")
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"{name!r}: {where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                         f"HF_HUB_OFFLINE is set; {fetch_it}")
    try:
        return huggingface_hub.hf_hub_download(f.repo, f.filename)
    except (errors.GatedRepoError, errors.RepositoryNotFoundError) as error:
        raise ValueError(f"{name!r}: {where} cannot be accessed ({type(error).__name__}); accept the terms on "
                         f"https://huggingface.co/{f.repo}, log in with `hf auth login`, then {fetch_it}") from None
    except errors.LocalEntryNotFoundError as error:  # no connection: the cache was the only hope
        raise ValueError(f"{name!r}: {where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                         f"the Hub cannot be reached ({str(error).splitlines()[0]}); {fetch_it}") from None
    except errors.EntryNotFoundError:
        raise ValueError(f"{name!r}: {where} does not exist (the repository may have moved the file); "
                         f"pass a local path to the checkpoint") from None
    except (errors.HfHubHTTPError, OSError) as error:
        raise ValueError(f"{name!r}: {where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                         f"could not be downloaded ({type(error).__name__}: {str(error).splitlines()[0]}); "
                         f"{fetch_it}") from None
