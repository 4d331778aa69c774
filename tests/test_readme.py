""" The README's Python blocks run as they stand and print what their ``# ->`` comments say

Every ```python block of README.md is executed on its own (fresh namespace, an empty working
folder), in this process. Its expected output is written in ``# ->`` comments, inline after the
statement that prints (``print(x.shape)  # -> torch.Size([2, 3])``) or on the comment lines
below it (one ``# -> line`` per printed line); text after a further ``  # `` is commentary.
In an expected line ``...`` stands for any text, and a line holding only ``...`` for any number
of printed lines. A block with ``# ->`` comments must print exactly those lines; a block
without any is only run. ``<!-- test: slow -->`` on the line before a block marks it
``docs_slow``: ``make test`` skips it, ``make test-docs`` runs every block. A block that reads what
a recipe wrote names the command shown before it: ``<!-- test: slow; run: python recipes/x.py ... -->``
runs it first in the block's folder (``recipes/`` linked there), with this interpreter.
"""
import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
SLOW_MARK = '<!-- test: slow -->'
MARK = re.compile(r'^<!-- test: (.*) -->$')
EXPECTED = re.compile(r'#\s?->\s?(.*)$')


@dataclass
class Block:
    start: int  # README line number of the block's first code line
    code: str
    slow: bool
    setup: Optional[str] = None  # a command to run first (``run: ...`` in the block's mark)
    expected: List[Tuple[int, str]] = field(default_factory=list)  # (README line, expected printed line)


def _expected_text(comment: str) -> str:
    """ ``-> torch.Size([2])  # commentary`` → ``torch.Size([2])``. """
    return comment.split('  # ')[0].rstrip()


def _comment_start(line: str) -> Optional[int]:
    """ Index of the ``# ->`` comment on a code line (outside string literals), or None. """
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in '\'"':
            quote = char
        elif line.startswith('# ->', index) or line.startswith('#->', index):
            return index
    return None


def readme_blocks(text: str) -> List[Block]:
    """ The ```python blocks of a Markdown text with their expected-output comments. """
    blocks, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == '```python':
            previous = next((line.strip() for line in reversed(lines[:index]) if line.strip()), '')
            start = index + 2
            end = index + 1
            while end < len(lines) and lines[end].strip() != '```':
                end += 1
            if end == len(lines):
                raise AssertionError(f'README.md line {index + 1}: ```python block is never closed')
            code_lines = lines[index + 1:end]
            mark = MARK.match(previous)
            options = [option.strip() for option in mark.group(1).split(';')] if mark else []
            setup = next((option[len('run:'):].strip() for option in options if option.startswith('run:')), None)
            block = Block(start, '\n'.join(code_lines), 'slow' in options, setup)
            for offset, line in enumerate(code_lines):
                position = _comment_start(line)
                if position is not None:
                    match = EXPECTED.match(line[position:])
                    block.expected.append((start + offset, _expected_text(match.group(1))))
            blocks.append(block)
            index = end
        index += 1
    return blocks


def _line_matches(expected: str, printed: str) -> bool:
    if '...' not in expected:
        return expected == printed
    pattern = '.*'.join(re.escape(part) for part in expected.split('...'))
    return re.fullmatch(pattern, printed) is not None


def first_mismatch(expected: List[Tuple[int, str]], printed: List[str]) -> Optional[str]:
    """ None when ``printed`` matches ``expected`` (``...`` lines: any number of lines), else what differs. """
    def match(e: int, p: int) -> bool:
        if e == len(expected):
            return p == len(printed)
        if expected[e][1] == '...':
            return any(match(e + 1, skip) for skip in range(p, len(printed) + 1))
        return p < len(printed) and _line_matches(expected[e][1], printed[p]) and match(e + 1, p + 1)

    if match(0, 0):
        return None
    # report the first expected line that the printed lines do not satisfy (after '...': anywhere later)
    position, skipping = 0, False
    for line_number, text in expected:
        if text == '...':
            skipping = True
            continue
        candidates = range(position, len(printed)) if skipping else range(position, min(position + 1, len(printed)))
        found = next((p for p in candidates if _line_matches(text, printed[p])), None)
        if found is None:
            got = printed[position] if position < len(printed) else '(nothing more was printed)'
            return f'README.md line {line_number}: expected {text!r}\n    printed {got!r}'
        position, skipping = found + 1, False
    return f'README.md: the block printed lines its # -> comments do not show: {printed[position:][:5]!r}'


BLOCKS = readme_blocks(README.read_text(encoding='utf-8'))


def test_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 8, f'found only {len(BLOCKS)} ```python blocks in README.md: did the fence syntax change?'
    assert sum(len(block.expected) for block in BLOCKS) >= 20, 'the README blocks lost their # -> outputs'


def bare_expressions(block: Block) -> List[int]:
    """ README lines of expression statements that are not calls (``x.shape``, ``a, b``): they print
    nothing when the block runs as a script. """
    tree = ast.parse(block.code)
    return [block.start + node.lineno - 1 for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and not isinstance(node.value, (ast.Call, ast.Await, ast.Constant))]


def test_readme_blocks_print_their_values_instead_of_bare_expressions():
    lines = [line for block in BLOCKS for line in bare_expressions(block)]
    assert not lines, (f'README.md lines {lines}: a bare expression prints nothing outside a REPL; print(...) '
                       f'it and show the output in a # -> comment')


def test_harness_reads_and_matches_expected_outputs():
    text = '\n'.join(['intro', SLOW_MARK, '```python', "print('a  # b')  # -> a  # b", 'x = 1  # a comment',
                      'print(x)', '# -> 1  # commentary', '# -> ...', '# -> tail ... end', '```', '```python', 'pass',
                      '```'])
    slow, fast = readme_blocks(text)
    assert slow.slow and not fast.slow and slow.start == 4 and fast.start == 12
    setup, = readme_blocks('<!-- test: slow; run: python recipes/x.py --a 1 -->\n```python\npass\n```')
    assert setup.slow and setup.setup == 'python recipes/x.py --a 1'
    assert slow.expected == [(4, 'a'), (7, '1'), (8, '...'), (9, 'tail ... end')]
    assert first_mismatch(slow.expected, ['a', '1', 'x', 'y', 'tail 42 end']) is None
    assert first_mismatch(slow.expected, ['a', '1', 'tail end']) is not None
    assert 'line 7' in first_mismatch(slow.expected, ['a', '2', 'tail 1 end'])
    assert 'line 7' in first_mismatch(slow.expected, ['a', 'unexpected', '1', 'tail 1 end'])
    assert 'do not show' in first_mismatch([(1, 'a')], ['a', 'b'])
    assert bare_expressions(Block(10, 'x = 1\nx.real\nprint(x)\nx, x', False)) == [11, 13]


def run_setup(command: str, folder: Path) -> None:
    """ ``python recipes/...`` as a user runs it from a clone, in ``folder``. """
    words = shlex.split(command)
    assert words[0] == 'python', f'a run: command starts with python, got {command!r}'
    (folder / 'recipes').symlink_to(ROOT / 'recipes')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    completed = subprocess.run([sys.executable, *words[1:]], cwd=folder, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f'{command} failed:\n{completed.stderr[-2000:]}'


@pytest.mark.usefixtures('one_torch_thread')
@pytest.mark.parametrize('block', [
    pytest.param(block, id=f'README.md:{block.start}', marks=[pytest.mark.docs_slow] if block.slow else [])
    for block in BLOCKS])
def test_readme_block_runs_and_prints_its_outputs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if block.setup is not None:
        run_setup(block.setup, tmp_path)
    # line numbers in a traceback are README.md's
    code = compile('\n' * (block.start - 1) + block.code, str(README), 'exec')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        exec(code, {'__name__': '__readme__'})
    if block.expected:
        lines = printed.getvalue().rstrip('\n').split('\n') if printed.getvalue() else []
        mismatch = first_mismatch(block.expected, [line.rstrip() for line in lines])
        assert mismatch is None, f'block at README.md line {block.start}: {mismatch}\nprinted:\n{printed.getvalue()}'
