""" Typed recipe configs: dataclass defaults < YAML file < command line

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
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import yaml

__all__ = ['ConfigError', 'parse_config', 'parse_values', 'run_cli', 'load_config', 'config_from_dict', 'config_to_dict',
           'save_config']

ConfigT = TypeVar('ConfigT')


class ConfigError(ValueError):
    """ A config key that does not exist or a value that does not fit its field. """


def _unknown_key_message(key: str, known: Sequence[str], source: str) -> str:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    return f'unknown config key {key!r} in {source}.{hint} Valid keys: {", ".join(sorted(known))}'


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """ ``value`` converted to the field type ``annotation`` or a ConfigError naming ``key``. """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        if value is None or (isinstance(value, str) and value.lower() in ('none', 'null')):
            if type(None) in args:
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
    """ ``config_cls`` from a mapping; unknown keys and bad values raise :class:`ConfigError`. """
    types = _field_types(config_cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(_unknown_key_message(key, list(types), source))
        kwargs[key] = _coerce(value, types[key], key)
    try:
        return config_cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f'{source}: {error}') from error


def config_to_dict(config: Any) -> Dict[str, Any]:
    """ A config as plain YAML/JSON-friendly values (tuples become lists, also inside mappings). """
    def plain(value):
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return [plain(item) for item in value] if isinstance(value, (tuple, list)) else value
    return {key: plain(value) for key, value in dataclasses.asdict(config).items()}


def save_config(config: Any, output_dir: str, filename: str = 'config.yaml') -> Path:
    """ Writes ``config`` as YAML to ``output_dir/filename``, every field resolved; ``--config`` on that
    file reruns the run (``resume`` is written as false: the file describes the run from its start). """
    values = config_to_dict(config)
    if 'resume' in values:
        values['resume'] = False
    path = Path(output_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f'# the resolved settings of this run ({type(config).__name__}); rerun it with --config {path}\n'
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    return path


def load_config(path: str) -> Dict[str, Any]:
    """ The mapping in a YAML config file, or a ConfigError naming the file. """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f'config file {str(file)!r} does not exist')
    values = yaml.safe_load(file.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f'config file {str(file)!r} must hold a mapping of keys to values')
    return values


def parse_values(
        config_cls: Type,
        argv: Optional[List[str]] = None,
        description: Optional[str] = None,
) -> Tuple[Dict[str, Any], str]:
    """ The raw settings given by ``--config file.yaml`` and ``--key value`` in ``argv``, and their source.

    Only keys actually given appear; the dataclass defaults are not filled in. Unknown keys raise
    :class:`ConfigError`.
    """
    types = _field_types(config_cls)
    parser = argparse.ArgumentParser(description=description or config_cls.__doc__, allow_abbrev=False)
    parser.add_argument('--config', help='YAML file with any of the keys below (command line wins)')
    for key, annotation in types.items():
        flag_options = dict(nargs='?', const='true') if annotation is bool else {}
        parser.add_argument(f'--{key}', default=argparse.SUPPRESS, metavar='VALUE', **flag_options)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        key = unknown[0].lstrip('-').split('=')[0]
        raise ConfigError(_unknown_key_message(key, list(types), 'the command line'))
    values: Dict[str, Any] = {}
    source = 'the command line'
    if args.config:
        values.update(load_config(args.config))
        source = f'{args.config} + the command line'
        for key in values:
            if key not in types:
                raise ConfigError(_unknown_key_message(key, list(types), args.config))
    for key, value in vars(args).items():
        if key != 'config':
            # a YAML list or mapping on the command line ("[3, 7]", "{drop_rate: 0.2}") is read the YAML way
            values[key] = yaml.safe_load(value) if types[key] is not str and value.strip().startswith(('[', '{')) else value
    return values, source


def parse_config(
        config_cls: Type[ConfigT],
        argv: Optional[List[str]] = None,
        description: Optional[str] = None,
) -> ConfigT:
    """ ``config_cls`` from ``--config file.yaml`` and ``--key value`` overrides in ``argv``. """
    values, source = parse_values(config_cls, argv, description)
    return config_from_dict(config_cls, values, source)


def run_cli(main: Callable[[], Any]) -> Any:
    """ Runs a recipe's ``main``; a bad setting or a missing file/dataset exits with its message, no traceback. """
    try:
        return main()
    except (ConfigError, FileNotFoundError) as error:
        raise SystemExit(f'error: {error}') from None
