"""The folders pipelines/ and sampling/ install as vlgen.pipelines and vlgen.sampling, in regular and
editable installs alike: a user's own `pipelines` or `sampling` next to a script cannot shadow them."""
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run with `python -S` and the install on sys.path, after the script's folder: as a script sees a
# virtual environment. The other packages come from this environment, without its own vlgen.
USER_SCRIPT = """
import site, sys
site.addsitedir(sys.argv[1])  # the install (and its .pth files, which an editable install needs)
sys.path.append(sys.argv[2])  # the other packages
import vlgen
from vlgen.pipelines import DiTLLaMAPipeline, SiTLLaMAPipeline
from vlgen.pipelines.base import ClassConditionalPipeline
from vlgen.sampling import sample_ode
import vlgen.pipelines, vlgen.sampling
assert "pipelines" not in sys.modules and "sampling" not in sys.modules, "the user's folders were imported"
print(vlgen.__file__, vlgen.pipelines.__file__, vlgen.sampling.__file__, sample_ode.__module__)
"""


def build(kind, source, out):
    """A wheel of a copy of the source tree made by its build backend: "wheel" (regular) or
    "editable" (pointing at the copy); the build leaves its scratch files in the copy."""
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__"))
    hook = {"wheel": "build_wheel", "editable": "build_editable"}[kind]
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


def other_packages(folder):
    """This environment's site-packages as links, without any vlgen install."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("vlgen", "__editable__", "_vlgen")):
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_a_users_pipelines_and_sampling_folders_do_not_shadow_vlgen(kind, tmp_path):
    source = tmp_path / "source"
    wheel = build(kind, source, tmp_path / "dist")
    install = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # a pure-Python wheel installs by unpacking (what pip does)
        archive.extractall(install)
        top_level = {name.split("/")[0] for name in archive.namelist()}
    if kind == "wheel":  # nothing but vlgen: no top-level `pipelines` or `sampling`
        assert {name for name in top_level if not name.endswith(".dist-info")} == {"vlgen"}
    user = tmp_path / "project"
    for name in ("pipelines", "sampling"):
        (user / name).mkdir(parents=True)
        (user / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} was imported')\n")
    (user / "script.py").write_text(USER_SCRIPT)
    result = subprocess.run([sys.executable, "-S", "script.py", str(install), str(other_packages(tmp_path / "deps"))],
                            cwd=user, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    package, pipelines, sampling, sampler_module = result.stdout.split()
    origin = install if kind == "wheel" else source  # an editable install points at the source tree
    assert Path(package) == origin / "vlgen" / "__init__.py"
    assert Path(pipelines) == origin / ("vlgen/pipelines" if kind == "wheel" else "pipelines") / "__init__.py"
    assert Path(sampling) == origin / ("vlgen/sampling" if kind == "wheel" else "sampling") / "__init__.py"
    assert sampler_module == "vlgen.sampling.flow"


def test_a_source_checkout_imports_the_folders_beside_it():
    """`python -m vlgen` at a checkout's root imports vlgen/ from there (ahead of any install):
    pipelines/ and sampling/ beside it still serve as vlgen.pipelines and vlgen.sampling."""
    code = "import vlgen.pipelines, vlgen.sampling; print(vlgen.pipelines.__file__, vlgen.sampling.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(ROOT / "pipelines" / "__init__.py"), str(ROOT / "sampling" / "__init__.py")]
