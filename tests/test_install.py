"""What each install gives: the core (torch + timm) alone, and clear errors for missing extras and versions

The core-only install is simulated in a subprocess by an import blocker (``sys.meta_path``'s path
finder replaced by one that does not find the libraries of the ``train`` and ``smp`` extras), not by
uninstalling.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the importable names of what `pip install timm-aconv` does not install (torch, timm and timm's own
# dependencies torchvision, pyyaml, huggingface_hub, safetensors are there)
EXTRAS_ONLY = [
    'accelerate',
    'albumentations',
    'cv2',
    'docstring_parser',
    'jsonargparse',
    'matplotlib',
    'scipy',
    'segmentation_models_pytorch',
    'sklearn',
]

CHILD = '''
import json, sys, warnings
from importlib.machinery import PathFinder
BLOCKED = set(sys.argv[1:])


class WithoutExtras(PathFinder):
    """ sys.meta_path's path finder minus the extras' libraries: they look uninstalled (find_spec gives
    None, import raises ModuleNotFoundError), as in an environment with the core install only. """

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition('.')[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)


def forget_timm_aconv():
    for name in [name for name in sys.modules if name.partition('.')[0] == 'timm_aconv']:
        del sys.modules[name]


report = {}
sys.meta_path[sys.meta_path.index(PathFinder)] = WithoutExtras
import torch, timm, timm_aconv
model = timm.create_model('aconv_resnet20', num_classes=10)
report['logits'] = list(model(torch.randn(2, 3, 32, 32)).shape)
report['smp_registered'] = timm_aconv.SMP_REGISTERED
report['imported_extras'] = sorted({name.partition('.')[0] for name in sys.modules} & BLOCKED)
try:
    import timm_aconv.engine
except ImportError as error:
    report['train_error'] = str(error)

# SMP installed, but a version without an internal the registrations use
sys.meta_path[sys.meta_path.index(WithoutExtras)] = PathFinder
forget_timm_aconv()
import segmentation_models_pytorch as smp
del smp.MODEL_ARCHITECTURES_MAPPING
smp.__version__ = '9.0.0'
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import timm_aconv
report['old_smp_registered'] = timm_aconv.SMP_REGISTERED
report['old_smp_warnings'] = [
    str(warning.message) for warning in caught if 'segmentation-models-pytorch' in str(warning.message)]
report['old_smp_model'] = type(timm.create_model('aconv_simple_cnn')).__name__

# a timm without the private helper the models use
forget_timm_aconv()
import timm.models._features
del timm.models._features.feature_take_indices
timm.__version__ = '9.0.0'
try:
    import timm_aconv
except ImportError as error:
    report['old_timm_error'] = str(error)
print(json.dumps(report))
'''


def test_core_install_works_and_missing_extras_or_versions_say_what_to_install():
    completed = subprocess.run(
        [sys.executable, '-c', CHILD, *EXTRAS_ONLY], capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.splitlines()[-1])
    # the plugin: the registered models work with torch + timm alone, and pull in no extra
    assert report['logits'] == [2, 10]
    assert report['smp_registered'] is False
    assert report['imported_extras'] == []
    # the training engine names what is missing and the one command that installs it
    assert report['train_error'] == (
        'timm_aconv.engine needs the training libraries, missing here: accelerate, albumentations, '
        "docstring-parser, jsonargparse, matplotlib, scikit-learn, scipy; pip install 'timm-aconv[train]'"
    )
    # an SMP without the internals: a warning naming the supported versions, the timm side still works
    assert report['old_smp_registered'] is False and report['old_smp_model'] == 'SimpleCnn'
    assert len(report['old_smp_warnings']) == 1
    assert (
        'SMP 9.0.0 does not have; supported: segmentation-models-pytorch>=0.5 (tested 0.5.0 and 0.6.0); '
        'the SMP encoders and architectures are not registered'
    ) in report['old_smp_warnings'][0]
    assert report['old_timm_error'] == (
        "timm_aconv's models use timm's private timm.models._features.feature_take_indices, which timm 9.0.0 does "
        'not have; supported: timm>=1.0.16 (tested 1.0.16 and 1.0.31)'
    )


RECIPE_MODULES = [
    'timm_aconv/recipes/__init__.py',
    'timm_aconv/recipes/compare.py',
    'timm_aconv/recipes/learn_filters.py',
    'timm_aconv/recipes/size_budget.py',
    'timm_aconv/recipes/train_classification.py',
    'timm_aconv/recipes/train_segmentation.py',
]


def test_the_wheel_ships_the_recipes_and_their_configs(tmp_path):
    """What `pip install 'timm-aconv[train]'` installs: the recipe modules and every shipped config."""
    import zipfile

    build = subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '--no-build-isolation',
            '-q',
            '-w',
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob('timm_aconv-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(path.name for path in (ROOT / 'timm_aconv' / 'recipes' / 'configs').glob('*.yaml'))
    assert configs and {f'timm_aconv/recipes/configs/{name}' for name in configs} <= names
    assert set(RECIPE_MODULES) <= names
    assert not any(name.startswith(('recipes/', 'tests/', 'benchmarks/')) for name in names)


def test_recipes_run_as_modules_with_a_shipped_config_by_name(tmp_path):
    """`python -m timm_aconv.recipes.<name> --config <shipped name>` from a folder outside the repository."""
    run = subprocess.run(
        [
            sys.executable,
            '-m',
            'timm_aconv.recipes.compare',
            '--config',
            'digits',
            '--kernel_sizes',
            '3',
            '--repeats',
            '2',
            '--epochs',
            '1',
            '--output_dir',
            'run',
            '--num_threads',
            '1',
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert '| 3×3 (best) |' in run.stdout and (tmp_path / 'run' / 'comparison.md').is_file()
    usage = subprocess.run(
        [sys.executable, '-m', 'timm_aconv.recipes.compare', '--config', 'simple_cnn_mnist', '--help'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 0 and usage.stdout.startswith('usage: python -m timm_aconv.recipes.compare')
    missing = subprocess.run(
        [sys.executable, '-m', 'timm_aconv.recipes.compare', '--config', 'no_such_config'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert (
        "error: config file 'no_such_config' does not exist (or the name of a shipped config: digits," in missing.stderr
    )
