"""Typed recipe configs on jsonargparse: dataclass defaults < YAML file (``--config``) < ``--key value``

A recipe's settings are one dataclass: a field's type (``Literal``, ``Optional``, lists, the ranges of
:mod:`jsonargparse.typing`) is its check, its default the default, the docstring under it the help line.
:func:`parse_config` parses them with `jsonargparse <https://jsonargparse.readthedocs.io>`_ (``--help``,
``--print_config``), :func:`check_fields` checks a config built in Python the same way, and every bad key or
value is a :class:`ConfigError` naming it, which :func:`run_cli` prints as one ``error:`` line:

    >>> config = parse_config(ClassificationConfig, ['--config', 'digits', '--kernel_size', '5', '--resume'])

``--config`` takes a path or a shipped config's name; a list key takes ``3,7`` or a YAML list; a boolean
key alone means true.
"""

import argparse
import dataclasses
import difflib
import functools
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Type, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, set_parsing_settings
from jsonargparse import Namespace as ParsedValues

from ..layers.covariance import resolve_axis_bounds, resolve_kernel_size, resolve_sigma_init

__all__ = [
    'ConfigError',
    'build_parser',
    'check_fields',
    'config_to_dict',
    'parse_config',
    'register_config_dir',
    'run_cli',
    'save_config',
]

ConfigT = TypeVar('ConfigT')

# the help text of a field is the string literal right under it
set_parsing_settings(docstring_parse_attribute_docstrings=True)


class ConfigError(ValueError):
    """A config key that does not exist or a value that does not fit its field."""


# folders of configs that --config finds by name (the recipes package registers its shipped configs)
CONFIG_DIRS: List[Path] = []


def register_config_dir(directory: Path) -> None:
    """Let ``--config NAME`` find ``directory/NAME.yaml`` (a path that exists is always taken first)."""
    if Path(directory) not in CONFIG_DIRS:
        CONFIG_DIRS.append(Path(directory))


def resolve_config_path(path: str) -> Path:
    """``path`` itself when it is a file, else a registered config of that name (``digits`` or ``digits.yaml``),
    else a ConfigError naming the file and the configs that exist."""
    file = Path(path)
    if file.is_file():
        return file
    if file.parent == Path('.'):
        name = file.name if file.suffix in ('.yaml', '.yml') else f'{file.name}.yaml'
        for directory in CONFIG_DIRS:
            if (directory / name).is_file():
                return directory / name
    shipped = sorted(config.stem for directory in CONFIG_DIRS for config in directory.glob('*.yaml'))
    known = f' (or the name of a shipped config: {", ".join(shipped)})' if shipped else ''
    raise ConfigError(f'config file {str(file)!r} does not exist{known}')


class _ConfigFile(ActionConfigFile):
    """``--config``: a YAML file, or the name of a shipped config (:func:`resolve_config_path`)."""

    def __call__(self, parser, cfg, values, option_string=None):
        super().__call__(parser, cfg, str(resolve_config_path(values)), option_string)


# jsonargparse's messages for a key no field has: on the command line, in a YAML file
_UNKNOWN_KEY = re.compile(r"(?i:unrecognized arguments): --([^\s=]+)|Option '([^']+)' is not accepted")


class _ArgumentParser(ArgumentParser):
    """jsonargparse, its errors raised as :class:`ConfigError` (one ``error: ...`` line via :func:`run_cli`);
    an unknown key gets the keys it may have meant."""

    def error(self, message: str, ex: Optional[Exception] = None) -> None:
        unknown = _UNKNOWN_KEY.search(message)
        if unknown:
            key = unknown.group(1) or unknown.group(2)
            keys = [action.dest for action in self._actions if action.dest not in ('help', 'config', 'print_config')]
            close = difflib.get_close_matches(key, keys, n=3)
            message = f'unknown key {key!r}' + (f'; did you mean {", ".join(close)}?' if close else '; see --help')
        raise ConfigError(' '.join(message.split())) from ex


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (each key with its type and default), the description's lines kept as written."""


def _lists_as_yaml(argv: List[str], config_cls: Type) -> List[str]:
    """``argv`` with each value of a list or tuple field given the shell's way (``--kernel_sizes 3,7``,
    ``--variants conv7``) written as the YAML list jsonargparse reads (``[3,7]``); other words as they are."""
    hints = typing.get_type_hints(config_cls).items()
    lists = {
        key for key, hint in hints if {list, tuple} & {typing.get_origin(h) for h in (hint, *typing.get_args(hint))}
    }
    words: List[str] = []
    for word in argv:
        key, equals, value = word.partition('=')
        if words and words[-1].startswith('--') and words[-1][2:] in lists and not word.startswith('--'):
            key, equals, value = '', '', word
        elif not (word.startswith('--') and equals and key[2:] in lists):
            words.append(word)
            continue
        as_is = value.strip().startswith('[') or value.strip() in ('null', '')
        words.append(key + equals + (value if as_is else f'[{value}]'))
    return words


def _default_prog() -> Optional[str]:
    """The command as typed: ``python -m timm_aconv.recipes.x`` for a module run with ``-m``,
    ``python recipes/x.py`` for a script; argparse's default otherwise."""
    main_spec = getattr(sys.modules.get('__main__'), '__spec__', None)
    if main_spec is not None and main_spec.name.startswith('timm_aconv.'):
        return f'python -m {main_spec.name}'
    script = sys.argv[0] if sys.argv else ''
    return f'python {script}' if script.endswith('.py') and not script.endswith('__main__.py') else None


def build_parser(
    config_cls: Type,
    description: Optional[str] = None,
    prog: Optional[str] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> ArgumentParser:
    """The parser of a recipe: ``--config``, ``--print_config`` and one ``--key`` per field of ``config_cls``
    (its type, default, ``defaults`` over the dataclass's, and docstring); a bool field alone means true."""
    parser = _ArgumentParser(
        prog=prog or _default_prog(),
        description=description,
        usage='%(prog)s [--config FILE] [--KEY VALUE ...]',
        allow_abbrev=False,
        exit_on_error=False,
        formatter_class=_HelpFormatter,
        epilog='Settings: the defaults shown, then --config FILE, then --KEY VALUE (the command line wins). '
        'Lists: 3,7 or "[3, 7]"; a boolean flag alone means true; null means none.',
    )
    parser.add_argument('--config', action=_ConfigFile, metavar='FILE', help='YAML file (or shipped config name)')
    parser.add_class_arguments(config_cls, as_group=False)
    bools = {field.name for field in dataclasses.fields(config_cls) if field.type in (bool, 'bool')}
    for action in parser._actions:
        if action.dest in bools:
            action.nargs, action.const = '?', True
    if defaults:
        parser.set_defaults(dict(defaults))
    return parser


def _builtin(value: Any) -> Any:
    """A parsed value with the numbers of jsonargparse's range types (``PositiveInt``, ...) as plain int/float."""
    if isinstance(value, (list, tuple)):
        return type(value)(_builtin(item) for item in value)
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return float(value) if isinstance(value, float) else int(value)
    return value


def _settings(values: ParsedValues) -> Dict[str, Any]:
    """The parsed fields (no ``--config``) as the dataclass's keyword arguments."""
    return {key: _builtin(value) for key, value in values.as_dict().items() if key not in ('config', '__path__')}


def parse_config(
    config_cls: Type[ConfigT],
    argv: Optional[List[str]] = None,
    description: Optional[str] = None,
    prog: Optional[str] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> ConfigT:
    """``config_cls`` from ``defaults``, ``--config file.yaml`` and ``--key value`` overrides in ``argv``
    (later wins). ``--help`` and ``--print_config`` print and exit; any bad key or value is a ConfigError."""
    parser = build_parser(config_cls, description, prog, defaults)
    argv = sys.argv[1:] if argv is None else list(argv)
    values = parser.parse_args(_lists_as_yaml(argv, config_cls))
    return config_cls(**_settings(values))


@functools.cache
def _field_parser(config_cls: Type) -> ArgumentParser:
    return build_parser(config_cls)


# config fields that are AdaptiveConv2d arguments, checked the way the layer checks them
_LAYER_ARGUMENT_CHECKS: Dict[str, Callable[[Any], Any]] = dict(
    kernel_size=resolve_kernel_size,
    sigma_init=resolve_sigma_init,
    sigma_bounds=lambda bounds: resolve_axis_bounds(bounds, (3, 3), 'spherical'),
)


def check_fields(config: Any) -> None:
    """Every field of the dataclass ``config`` checked against its type, as the command line checks it, and
    set to the parsed value (a list given for a tuple becomes the tuple); the fields that are AdaptiveConv2d
    arguments (``kernel_size``, ``sigma_init``, ``sigma_bounds``) checked the way the layer checks them.
    A ConfigError naming the key otherwise, before any model is built."""
    parsed = _settings(_field_parser(type(config)).parse_object(config_to_dict(config)))
    for key, value in parsed.items():
        setattr(config, key, value)
    for key, check in _LAYER_ARGUMENT_CHECKS.items():
        if getattr(config, key, None) is not None:
            try:
                check(getattr(config, key))
            except (TypeError, ValueError) as error:
                raise ConfigError(str(error)) from None


def config_to_dict(config: Any) -> Dict[str, Any]:
    """A config as plain YAML/JSON-friendly values (tuples become lists, also inside mappings)."""

    def plain(value):
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return [plain(item) for item in value] if isinstance(value, (tuple, list)) else value

    return {key: plain(value) for key, value in dataclasses.asdict(config).items()}


def save_config(config: Any, output_dir: str, filename: str = 'config.yaml') -> Path:
    """Writes ``config`` as YAML to ``output_dir/filename``, every field resolved; ``--config`` on that
    file reruns the run (``resume`` is written as false: the file describes the run from its start)."""
    values = config_to_dict(config)
    if 'resume' in values:
        values['resume'] = False
    path = Path(output_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f'# the resolved settings of this run ({type(config).__name__}); rerun it with --config {path}\n'
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    return path


def run_cli(main: Callable[[], Any]) -> Any:
    """Runs a recipe's ``main``; a bad setting or a missing file/dataset ends the program with one
    ``error: ...`` line on stderr and exit status 2 (argparse's convention), no traceback."""
    try:
        return main()
    except (ConfigError, FileNotFoundError) as error:
        message = ' '.join(str(error).splitlines())
        print(f'error: {message}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
