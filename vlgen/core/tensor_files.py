"""Reading torch files safely: plain tensors and containers only (torch.load with weights_only=True),
with errors that name the file and the fix, and never advise unpickling an untrusted file."""
import pickle
import zipfile

import torch


def load_tensor_file(path, allowed_types=()):
    """The contents of a torch file of tensors (dicts, lists, numbers too) on the CPU; allowed_types:
    further classes the file may hold (e.g. the argparse.Namespace of reference checkpoints)."""
    try:
        with torch.serialization.safe_globals(list(allowed_types)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a class or function reference: a pickle that can run code
            raise ValueError(f"{path} is not a plain tensor checkpoint: it holds Python objects that only "
                             "unpickling could restore, which can run code, so vlgen does not load it; save the "
                             "state dict alone (torch.save(model.state_dict(), path)) from code you trust") from None
        raise _unreadable(path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError):
        raise _unreadable(path) from None


def _unreadable(path):
    return ValueError(f"{path} is not a readable torch file (truncated or corrupt?): copy or save it again")
