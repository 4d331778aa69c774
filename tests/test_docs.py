"""The Python blocks of README.md and of every docs/ page run as they stand and print what their
``# ->`` comments say; their links resolve; the docs site builds with strict checks

Every ```python block of README.md and docs/*.md is executed on its own (fresh namespace, an empty
working folder), in this process. Its expected output is written in ``# ->`` comments, inline after the
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
PAGES = [README, *sorted((ROOT / 'docs').glob('*.md'))]
SLOW_MARK = '<!-- test: slow -->'
MARK = re.compile(r'^<!-- test: (.*) -->$')
EXPECTED = re.compile(r'#\s?->\s?(.*)$')


@dataclass
class Block:
    start: int  # line number (in its page) of the block's first code line
    code: str
    slow: bool
    setup: Optional[str] = None  # a command to run first (``run: ...`` in the block's mark)
    expected: List[Tuple[int, str]] = field(default_factory=list)  # (line, expected printed line)
    page: str = 'README.md'  # the file, relative to the repository root


def _expected_text(comment: str) -> str:
    """``-> torch.Size([2])  # commentary`` → ``torch.Size([2])``."""
    return comment.split('  # ')[0].rstrip()


def _comment_start(line: str) -> Optional[int]:
    """Index of the ``# ->`` comment on a code line (outside string literals), or None."""
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


def markdown_blocks(text: str, page: str = 'README.md') -> List[Block]:
    """The ```python blocks of a Markdown text with their expected-output comments."""
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
                raise AssertionError(f'{page} line {index + 1}: ```python block is never closed')
            code_lines = lines[index + 1 : end]
            mark = MARK.match(previous)
            options = [option.strip() for option in mark.group(1).split(';')] if mark else []
            setup = next((option[len('run:') :].strip() for option in options if option.startswith('run:')), None)
            block = Block(start, '\n'.join(code_lines), 'slow' in options, setup, page=page)
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
    """None when ``printed`` matches ``expected`` (``...`` lines: any number of lines), else what differs."""

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
            return f'line {line_number}: expected {text!r}\n    printed {got!r}'
        position, skipping = found + 1, False
    return f'the block printed lines its # -> comments do not show: {printed[position:][:5]!r}'


BLOCKS = [
    block for page in PAGES for block in markdown_blocks(page.read_text(encoding='utf-8'), str(page.relative_to(ROOT)))
]


def test_pages_have_their_python_blocks():
    by_page = {page: [block for block in BLOCKS if block.page == page] for page in {block.page for block in BLOCKS}}
    assert len(by_page.get('README.md', [])) >= 4, 'README.md lost its examples: did the fence syntax change?'
    assert len(BLOCKS) >= 20, f'found only {len(BLOCKS)} ```python blocks in README.md and docs/'
    assert sum(len(block.expected) for block in BLOCKS) >= 40, 'the blocks lost their # -> outputs'


def bare_expressions(block: Block) -> List[int]:
    """Lines of expression statements that are not calls (``x.shape``, ``a, b``): they print
    nothing when the block runs as a script."""
    tree = ast.parse(block.code)
    return [
        block.start + node.lineno - 1
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and not isinstance(node.value, (ast.Call, ast.Await, ast.Constant))
    ]


def test_blocks_print_their_values_instead_of_bare_expressions():
    lines = [f'{block.page}:{line}' for block in BLOCKS for line in bare_expressions(block)]
    assert not lines, (
        f'{lines}: a bare expression prints nothing outside a REPL; print(...) it and show the output in a # -> comment'
    )


def test_harness_reads_and_matches_expected_outputs():
    text = '\n'.join(
        [
            'intro',
            SLOW_MARK,
            '```python',
            "print('a  # b')  # -> a  # b",
            'x = 1  # a comment',
            'print(x)',
            '# -> 1  # commentary',
            '# -> ...',
            '# -> tail ... end',
            '```',
            '```python',
            'pass',
            '```',
        ]
    )
    slow, fast = markdown_blocks(text)
    assert slow.slow and not fast.slow and slow.start == 4 and fast.start == 12
    (setup,) = markdown_blocks('<!-- test: slow; run: python recipes/x.py --a 1 -->\n```python\npass\n```')
    assert setup.slow and setup.setup == 'python recipes/x.py --a 1'
    assert slow.expected == [(4, 'a'), (7, '1'), (8, '...'), (9, 'tail ... end')]
    assert first_mismatch(slow.expected, ['a', '1', 'x', 'y', 'tail 42 end']) is None
    assert first_mismatch(slow.expected, ['a', '1', 'tail end']) is not None
    assert 'line 7' in first_mismatch(slow.expected, ['a', '2', 'tail 1 end'])
    assert 'line 7' in first_mismatch(slow.expected, ['a', 'unexpected', '1', 'tail 1 end'])
    assert 'do not show' in first_mismatch([(1, 'a')], ['a', 'b'])
    assert bare_expressions(Block(10, 'x = 1\nx.real\nprint(x)\nx, x', False)) == [11, 13]


def run_setup(command: str, folder: Path) -> None:
    """``python recipes/...`` as a user runs it from a clone, in ``folder``."""
    words = shlex.split(command)
    assert words[0] == 'python', f'a run: command starts with python, got {command!r}'
    (folder / 'recipes').symlink_to(ROOT / 'recipes')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    completed = subprocess.run([sys.executable, *words[1:]], cwd=folder, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f'{command} failed:\n{completed.stderr[-2000:]}'


@pytest.mark.usefixtures('one_torch_thread')
@pytest.mark.parametrize(
    'block',
    [
        pytest.param(block, id=f'{block.page}:{block.start}', marks=[pytest.mark.docs_slow] if block.slow else [])
        for block in BLOCKS
    ],
)
def test_block_runs_and_prints_its_outputs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if block.setup is not None:
        run_setup(block.setup, tmp_path)
    # line numbers in a traceback are the page's
    code = compile('\n' * (block.start - 1) + block.code, str(ROOT / block.page), 'exec')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        exec(code, {'__name__': '__docs__'})
    if block.expected:
        lines = printed.getvalue().rstrip('\n').split('\n') if printed.getvalue() else []
        mismatch = first_mismatch(block.expected, [line.rstrip() for line in lines])
        assert mismatch is None, f'block at {block.page} line {block.start}: {mismatch}\nprinted:\n{printed.getvalue()}'


LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.MULTILINE | re.DOTALL)


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (mkdocs' ``toc`` gives the same one for the headings
    used here, which have no runs of spaces or dashes)."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower().replace('`', ''))
    return text.replace(' ', '-')


def page_anchors(path: Path) -> set:
    text = FENCE.sub('', path.read_text(encoding='utf-8'))
    return {heading_anchor(match.group(1)) for match in re.finditer(r'^#{1,6} (.+)$', text, re.MULTILINE)}


def broken_links(path: Path) -> List[str]:
    """The relative links of a page whose file or heading anchor does not exist."""
    broken = []
    text = FENCE.sub('', path.read_text(encoding='utf-8'))
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r'^[a-z]+:', target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition('#')
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f'{target} (no such file)')
        elif anchor and linked.suffix == '.md' and anchor not in page_anchors(linked):
            broken.append(f'{target} (no heading with that anchor in {linked.name})')
    return broken


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_resolve(page):
    assert not broken_links(page), f'{page.relative_to(ROOT)}: broken links {broken_links(page)}'


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / 'other.md').write_text('# A page: `with_code`, and more\n')
    page = tmp_path / 'page.md'
    page.write_text(
        '[ok](other.md#a-page-with_code-and-more) [self](#title) ![img](missing.png)\n'
        '[gone](gone.md) [anchor](other.md#nope) [web](https://example.com)\n# Title\n'
        '```\n[in code](ignored.md)\n```\n'
    )
    assert broken_links(page) == [
        'missing.png (no such file)',
        'gone.md (no such file)',
        'other.md#nope (no heading with that anchor in other.md)',
    ]


def test_readme_stays_short_and_links_every_docs_page():
    text = README.read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 250, 'README.md is a quick start: move the depth to a docs/ page'
    linked = {match.group(1).split('#')[0] for match in LINK.finditer(text) if match.group(1)}
    pages = {f'docs/{page.name}' for page in PAGES[1:] if page.name != 'index.md'}
    assert pages <= linked, f'README.md does not link {sorted(pages - linked)}'


def test_docs_site_builds_with_strict_link_checks(tmp_path):
    """``mkdocs build --strict`` (a dev dependency): every page in the navigation, no broken link or anchor."""
    completed = subprocess.run(
        [sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(tmp_path / 'site')],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / 'site' / 'index.html').is_file()
