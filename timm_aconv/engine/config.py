"""Typed recipe configs: dataclass defaults < YAML file < command line

A recipe declares its settings as a dataclass (fields typed with ``int``, ``float``, ``str``,
``bool``, ``Optional[...]``, ``Literal[...]`` choices, ``Tuple``/``List`` of numbers).
:func:`parse_config` builds one from ``--config file.yaml`` plus ``--key value`` overrides
for every field; unknown keys (in the file or on the command line) and values of the wrong
type or outside the allowed choices are :class:`ConfigError` naming the key:

    >>> config = parse_config(ClassificationConfig, ['--config', 'recipes/configs/digits.yaml', '--epochs', '3'])

Lists are given as YAML (``--kernel_sizes "[3, 7]"``) or comma separated (``--kernel_sizes 3,7``);
a bare boolean flag (``--resume``) means true.
"""

import argparse
import dataclasses
import difflib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from ..layers.covariance import resolve_axis_bounds, resolve_kernel_size, resolve_sigma_init
from .cli_help import GROUPS, field_help

__all__ = [
    'ConfigError',
    'build_parser',
    'config_from_dict',
    'config_to_dict',
    'load_config',
    'parse_config',
    'parse_values',
    'plain_text',
    'run_cli',
    'save_config',
]

ConfigT = TypeVar('ConfigT')


class ConfigError(ValueError):
    """A config key that does not exist or a value that does not fit its field."""


def _unknown_key_message(key: str, known: Sequence[str], source: str) -> str:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    return f'unknown config key {key!r} in {source}.{hint} Valid keys: {", ".join(sorted(known))}'


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to the field type ``annotation`` or a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        is_null = value is None or (isinstance(value, str) and value.lower() in ('none', 'null'))
        if is_null and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f'{key}: got {value!r}')
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f'{key} must be one of {list(args)}, got {value!r}')
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [item.strip() for item in value.strip('[]()').split(',') if item.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f'{key} must have {len(args)} values, got {value!r}')
            return tuple(_coerce(item, arg, key) for item, arg in zip(value, args))
        item_type = args[0] if args else Any
        items = [_coerce(item, item_type, key) for item in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ('true', 'yes', '1', 'false', 'no', '0'):
            return value.lower() in ('true', 'yes', '1')
        raise ConfigError(f'{key} must be true or false, got {value!r}')
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f'{key} must be an integer, got {value!r}')
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and number.is_integer():
                number = int(number)
            if isinstance(number, int):
                return number
        except ValueError:
            pass
        raise ConfigError(f'{key} must be an integer, got {value!r}')
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f'{key} must be a number, got {value!r}')
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f'{key} must be a number, got {value!r}') from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f'{key} must be a string, got {value!r}')
        return str(value)
    return value


def _field_types(config_cls: Type) -> Dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(config_cls)}


def config_from_dict(config_cls: Type[ConfigT], values: Dict[str, Any], source: str = 'config') -> ConfigT:
    """``config_cls`` from a mapping; unknown keys and bad values raise :class:`ConfigError`."""
    types = _field_types(config_cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(_unknown_key_message(key, list(types), source))
        kwargs[key] = _coerce(value, types[key], key)
    _check_layer_arguments(kwargs)
    try:
        return config_cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f'{source}: {error}') from error


# config fields that are AdaptiveConv2d arguments, checked the way the layer checks them
_LAYER_ARGUMENT_CHECKS: Dict[str, Callable[[Any], Any]] = dict(
    kernel_size=resolve_kernel_size,
    sigma_init=resolve_sigma_init,
    sigma_bounds=lambda bounds: resolve_axis_bounds(bounds, (3, 3), 'spherical'),
)


def _check_layer_arguments(values: Dict[str, Any]) -> None:
    """A bad ``kernel_size`` / ``sigma_init`` / ``sigma_bounds`` among the given ``values`` is a config
    error naming the key, before any model is built (the layer's own ValueError would come with a
    traceback)."""
    for key, check in _LAYER_ARGUMENT_CHECKS.items():
        value = values.get(key)
        if value is not None:
            try:
                check(value)
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


def load_config(path: str) -> Dict[str, Any]:
    """The mapping in a YAML config file (a path, or the name of a registered config), or a ConfigError
    naming the file."""
    file = resolve_config_path(path)
    values = yaml.safe_load(file.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f'config file {str(file)!r} must hold a mapping of keys to values')
    return values


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, its usage errors raised as :class:`ConfigError` (one ``error: ...`` line via :func:`run_cli`)."""

    def error(self, message: str) -> None:
        raise ConfigError(message)


def plain_text(docstring: Optional[str]) -> str:
    """A docstring as plain terminal text: reST roles, double backquotes and ``::`` removed."""
    text = inspect.cleandoc(docstring or '')
    text = re.sub(r':(?:mod|func|class|meth|attr|data):`~?([^`]+)`', r'\1', text)
    text = text.replace('``', '')
    return re.sub(r'(\S)::$', r'\1:', re.sub(r'\s+::$', '', text, flags=re.M), flags=re.M)


def _type_label(annotation: Any) -> str:
    """How a value of ``annotation`` is written on the command line, e.g. ``INT|null``, ``{sgd,adam}``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        labels = [_type_label(arg) for arg in args if arg is not type(None)]
        return '|'.join(labels + (['null'] if type(None) in args else []))
    if origin is typing.Literal:
        return '{' + ','.join(str(arg) for arg in args) + '}'
    if origin is tuple and args and args[-1] is not Ellipsis:
        return ','.join(_type_label(arg) for arg in args)
    if origin in (tuple, list):
        item = _type_label(args[0]) if args else 'VALUE'
        return f'{item},{item},...'
    if origin is dict or annotation is dict:
        return '{KEY: VALUE}'
    return {int: 'INT', float: 'FLOAT', str: 'STR', bool: 'BOOL'}.get(annotation, 'VALUE')


def _value_label(value: Any) -> str:
    """A default as it would be typed: null, true/false, 3,7 for lists."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ','.join(_value_label(item) for item in value) if value else '[]'
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _field_defaults(config_cls: Type) -> Dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(config_cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _default_prog() -> Optional[str]:
    """The command as typed: ``python -m timm_aconv.recipes.x`` for a module run with ``-m``,
    ``python recipes/x.py`` for a script; argparse's default otherwise."""
    main_spec = getattr(sys.modules.get('__main__'), '__spec__', None)
    if main_spec is not None and main_spec.name.startswith('timm_aconv.'):
        return f'python -m {main_spec.name}'
    script = sys.argv[0] if sys.argv else ''
    return f'python {script}' if script.endswith('.py') and not script.endswith('__main__.py') else None


def _config_file_in(argv: Optional[List[str]]) -> Optional[str]:
    """The value of ``--config`` in ``argv`` (to show its values as the defaults in ``--help``)."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument('--config')
    try:
        return finder.parse_known_args(argv)[0].config
    except SystemExit:
        return None


def build_parser(
    config_cls: Type,
    description: Optional[str] = None,
    prog: Optional[str] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> argparse.ArgumentParser:
    """The argparse parser of a recipe: ``--config`` plus one ``--key`` per field of ``config_cls``,
    grouped, each with its type, allowed values, default (``defaults`` over the dataclass's) and
    one line of help (:mod:`timm_aconv.engine.cli_help`). Every option defaults to "not given"."""
    types = _field_types(config_cls)
    shown = {**_field_defaults(config_cls), **(defaults or {})}
    parser = _ArgumentParser(
        prog=prog or _default_prog(),
        description=plain_text(description or config_cls.__doc__),
        usage='%(prog)s [--config FILE] [--KEY VALUE ...]',
        allow_abbrev=False,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=34),
        epilog='Settings: the defaults shown, then --config FILE, then --KEY VALUE (the command line wins).\n'
        'Lists: 3,7 or "[3, 7]"; a boolean flag alone means true; null means none.',
    )
    parser.add_argument('--config', metavar='FILE', help='YAML file with any of the keys below')
    grouped: Dict[str, List[Tuple[str, Any, str]]] = {}
    for field in dataclasses.fields(config_cls):
        group, text = field_help(field)
        default = f'(default: {_value_label(shown[field.name])})' if field.name in shown else '(required)'
        grouped.setdefault(group, []).append((field.name, types[field.name], f'{text} {default}'.strip()))
    for group in (name for name in GROUPS if name in grouped):
        arguments = parser.add_argument_group(group)
        for key, annotation, text in grouped[group]:
            flag_options = dict(nargs='?', const='true') if annotation is bool else {}
            arguments.add_argument(
                f'--{key}',
                default=argparse.SUPPRESS,
                metavar=_type_label(annotation),
                help=text.replace('%', '%%'),
                **flag_options,
            )
    return parser


def parse_values(
    config_cls: Type,
    argv: Optional[List[str]] = None,
    description: Optional[str] = None,
    prog: Optional[str] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> Tuple[Dict[str, Any], str]:
    """The raw settings given by ``defaults``, ``--config file.yaml`` and ``--key value`` in ``argv``
    (later wins), and their source.

    Only keys actually given appear; the dataclass defaults are not filled in. Unknown keys and
    malformed command lines raise :class:`ConfigError`. ``--help`` prints every key with its type,
    default (the file's value when ``--config`` comes first) and help line, then exits.
    """
    types = _field_types(config_cls)
    config_file = _config_file_in(argv)
    file_values = load_config(config_file) if config_file else {}
    for key in file_values:
        if key not in types:
            raise ConfigError(_unknown_key_message(key, list(types), config_file))
    parser = build_parser(config_cls, description, prog, {**(defaults or {}), **file_values})
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        key = unknown[0].lstrip('-').split('=')[0]
        raise ConfigError(_unknown_key_message(key, list(types), 'the command line'))
    values: Dict[str, Any] = dict(defaults or {})
    source = 'the command line'
    if config_file:
        values.update(file_values)
        source = f'{config_file} + the command line'
    for key, value in vars(args).items():
        if key != 'config':
            # a YAML list or mapping on the command line ("[3, 7]", "{drop_rate: 0.2}") is read the YAML way
            values[key] = (
                yaml.safe_load(value) if types[key] is not str and value.strip().startswith(('[', '{')) else value
            )
    return values, source


def parse_config(
    config_cls: Type[ConfigT],
    argv: Optional[List[str]] = None,
    description: Optional[str] = None,
    prog: Optional[str] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> ConfigT:
    """``config_cls`` from ``defaults``, ``--config file.yaml`` and ``--key value`` overrides in ``argv``."""
    values, source = parse_values(config_cls, argv, description, prog, defaults)
    return config_from_dict(config_cls, values, source)


def run_cli(main: Callable[[], Any]) -> Any:
    """Runs a recipe's ``main``; a bad setting or a missing file/dataset ends the program with one
    ``error: ...`` line on stderr and exit status 2 (argparse's convention), no traceback."""
    try:
        return main()
    except (ConfigError, FileNotFoundError) as error:
        message = ' '.join(str(error).splitlines())
        print(f'error: {message}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
