"""Push an export folder to the Hugging Face Hub as a dataset repo.

``push`` creates the repo when it is missing (``exist_ok``) and uploads the folder as one
commit: the data files, ``export_info.json`` and the card (``README.md``), whose ``configs``
tell the Hub which file is which split. Every way it can fail (offline, the Hub unreachable,
no token, no write access, a bad repo id) is one ``HubError`` line that says where the export
is and how to push it later; never a traceback from inside ``huggingface_hub``.
"""

from __future__ import annotations

import os
from pathlib import Path

from curation.errors import CurationError

# Network failures by class name, whatever HTTP library huggingface_hub uses underneath.
NETWORK_ERRORS = {"ConnectionError", "ConnectError", "ConnectTimeout", "TimeoutException", "TransportError", "NetworkError", "Timeout"}


class HubError(CurationError):
    """The export could not be pushed to the Hub; the export itself is intact."""


def _later(out_dir: Path, repo: str) -> str:
    return (
        f"the export is in {out_dir}; push it later with `curate export ... --push-to-hub {repo}` "
        f"or `HF_HUB_OFFLINE=0 hf upload {repo} {out_dir} --repo-type dataset`"
    )


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def push(out_dir: str | Path, repo: str, private: bool = False) -> str:
    """Upload ``out_dir`` to the dataset repo ``repo`` (``owner/name``); the commit's URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError

    out = Path(out_dir)
    if _offline():
        raise HubError(
            "could not reach the Hugging Face Hub (offline?): HF_HUB_OFFLINE is set (curate runs offline unless "
            f"HF_HUB_OFFLINE=0); {_later(out, repo)}"
        )
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not when huggingface_hub was imported
    try:
        if not get_token():
            raise LocalTokenNotFoundError("no token")
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo, folder_path=str(out), repo_type="dataset", commit_message="curate export", ignore_patterns=[".*", "**/.*"]
        )
    except HFValidationError as err:
        raise HubError(f"invalid Hub repo id {repo!r} ({_first_line(err)}); use OWNER/NAME") from None
    except LocalTokenNotFoundError:
        raise HubError(f"not logged in to the Hugging Face Hub (run `hf auth login` or set HF_TOKEN); {_later(out, repo)}") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            why = "the Hub refused the token (401: run `hf auth login` or set HF_TOKEN)"
        elif status == 403:
            why = f"the token may not write to {repo} (403)"
        else:
            why = f"the Hub answered {status or 'an error'}: {_first_line(err)}"
        raise HubError(f"could not push to {repo}: {why}; {_later(out, repo)}") from None
    except Exception as err:
        if isinstance(err, (ConnectionError, TimeoutError)) or NETWORK_ERRORS & {c.__name__ for c in type(err).__mro__}:
            raise HubError(f"could not reach the Hugging Face Hub (offline?): {_later(out, repo)}") from None
        raise HubError(f"could not push to {repo}: {type(err).__name__}: {_first_line(err)}; {_later(out, repo)}") from None
    return str(getattr(commit, "commit_url", commit))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
