"""A static read of a shipped training script (Python's `ast`), for three faults that sank public records
even where the logs looked fine (docs/CHALLENGE.md, "Checks", `script_static`):

1. `space_double_count`: the byte table adds the `▁` space byte inside the table (`len(piece[1:]...) + 1`)
   while the same branch also flags the token for the space byte added at counting time: every space is
   counted twice and bpb looks ~15% better.
2. `val_trained_before_scored`: a loop trains (`.backward()`, directly or through a helper) on validation
   data without scoring that data first in the same loop (pre-quantisation TTT). Score-first TTT, which
   scores each chunk under `torch.inference_mode()` / `torch.no_grad()` before training on it, passes.
3. `ngram_key_has_target`: a hashed n-gram key (xor / multiply-and-modulo of token ids) includes the target
   token, and the hash feeds an embedding: the model sees the token it is asked to predict.

A pattern found is a `fail` with file:line; a case the reader cannot settle is a `warn`. The reader knows
Python, not the author's intent: names matter (`val_tokens`, `targets`, `y = x[:, 1:]`), and so do calls
between functions of the same file. It never runs the script.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPACE = "\u2581"
_VAL_NAME = re.compile(r"(?:^|_)(?:val|valid|validation)_?(?:tokens?|data|ids|seqs?|stream|set|shards?)(?:$|_)", re.I)
_TARGET_NAMES = {"target", "targets", "tgt", "tgts", "y", "labels", "label", "next_token", "next_tokens",
                 "next_ids", "target_ids", "target_tokens"}
_NO_GRAD = {"inference_mode", "no_grad"}
_SCORE_NAME = re.compile(r"score|eval", re.I)
_EMBED_CALL = re.compile(r"emb|table|hash|ngram|bigram|trigram", re.I)       # modules that look up a hash
_EMBED_INDEX = re.compile(r"^(?!.*count).*(?:emb|table|weight)", re.I)        # tensors indexed by a hash
_BIG_CONSTANT = 1000


@dataclass(frozen=True)
class Finding:
    status: str          # "fail" | "warn"
    pattern: str         # space_double_count | val_trained_before_scored | ngram_key_has_target | unreadable
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def scan_files(paths: list[Path], root: Path | None = None) -> list[Finding]:
    """Findings of every script in `paths`, named relative to `root` when given."""
    out: list[Finding] = []
    for p in paths:
        name = str(p.relative_to(root)) if root else p.name
        try:
            source = p.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            out.append(Finding("warn", "unreadable", name, 0, f"cannot read ({e.strerror})"))
            continue
        out += scan_source(source, name)
    return out


def scan_source(source: str, name: str) -> list[Finding]:
    """Findings of one script's text; `name` is how findings cite it."""
    return list(_scan(source, name))


@lru_cache(maxsize=16)
def _scan(source: str, name: str) -> tuple[Finding, ...]:
    """Cached: submit and report audit the same script several times in one process."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return (Finding("warn", "unreadable", name, e.lineno or 0, f"not valid Python 3 ({e.msg}); not read"),)
    mod = _Module(tree)
    return tuple(sorted(_byte_tables(mod, name) + _validation_training(mod, name) + _ngram_keys(mod, name),
                  key=lambda f: (f.line, f.pattern)))


# ---- shared helpers -----------------------------------------------------------------------------
_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _scopes(tree: ast.Module):
    """The module body and every function, each with its own statements (nested functions apart)."""
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _nodes(roots):
    """Every node under `roots` (a node or a list of statements), not entering nested functions or classes."""
    stack = list(roots) if isinstance(roots, list) else [roots]
    while stack:
        node = stack.pop()
        if isinstance(node, _NESTED):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _own_nodes(scope):
    return _nodes(scope.body)


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _names(node) -> set[str]:
    """Identifiers a node reads: plain names and attribute names (self.val_tokens -> val_tokens)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


class _Module:
    """Functions by name, and which parameters receive validation data at some call site."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.scopes = list(_scopes(tree))
        self._own = {id(scope): list(_own_nodes(scope)) for scope in self.scopes}
        self._bindings: dict[int, list[tuple]] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        for scope in self.scopes[1:]:
            self.functions.setdefault(scope.name, scope)
        self.val_params: dict[str, dict[str, int]] = {}     # function -> {param: line of the binding call}
        for _ in range(3):                                   # bindings propagate through helpers
            for scope in self.scopes:
                self._bind_calls(scope, _val_sources(self, scope))
        self.sources = {id(scope): _val_sources(self, scope) for scope in self.scopes}
        self.trains = self._functions_that_train()
        self.scores = {n for n, f in self.functions.items() if any(_is_no_grad_with(x) for x in self.own(f))}

    def own(self, scope) -> list:
        """The scope's own nodes (computed once)."""
        return self._own[id(scope)]

    def bindings(self, scope) -> list[tuple]:
        """(target, value) of every assignment and for-loop of the scope; tuples unpacked pairwise."""
        if id(scope) not in self._bindings:
            pairs = []
            for n in self.own(scope):
                if isinstance(n, ast.Assign):
                    for t in n.targets:
                        if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple) and len(t.elts) == len(n.value.elts):
                            pairs += list(zip(t.elts, n.value.elts))
                        else:
                            pairs.append((t, n.value))
                elif isinstance(n, (ast.For, ast.AsyncFor)):
                    pairs.append((n.target, n.iter))
            self._bindings[id(scope)] = pairs
        return self._bindings[id(scope)]

    def _bind_calls(self, scope, sources: dict[str, str]):
        for node in self.own(scope):
            if not isinstance(node, ast.Call):
                continue
            fn = self.functions.get(_call_name(node))
            if fn is None:
                continue
            params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            if params and params[0] in ("self", "cls") and isinstance(node.func, ast.Attribute):
                params = params[1:]
            bound = list(zip(params, node.args)) + [(k.arg, k.value) for k in node.keywords if k.arg]
            for param, arg in bound:
                if _val_ident(self, scope, arg, sources) is not None:
                    self.val_params.setdefault(fn.name, {}).setdefault(param, node.lineno)

    def _functions_that_train(self) -> set[str]:
        trains = {n for n, f in self.functions.items() if any(_is_backward(x) for x in self.own(f))}
        for _ in range(3):
            trains |= {n for n, f in self.functions.items()
                       if any(isinstance(x, ast.Call) and _call_name(x) in trains for x in self.own(f))}
        return trains


def _is_backward(node) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = _call_name(node)
    return name == "backward" or (name == "grad" and isinstance(node.func, ast.Attribute)
                                  and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "autograd")


def _is_no_grad_with(node) -> bool:
    return isinstance(node, (ast.With, ast.AsyncWith)) and any(
        isinstance(item.context_expr, ast.Call) and _call_name(item.context_expr) in _NO_GRAD for item in node.items)


# ---- 1. the byte table -------------------------------------------------------------------------
def _is_space_test(node) -> bool:
    """`x.startswith("▁")` or `x[0] == "▁"` somewhere in an expression."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and _call_name(n) == "startswith" and n.args:
            a = n.args[0]
            if isinstance(a, ast.Constant) and a.value == SPACE:
                return True
        if isinstance(n, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == SPACE for c in n.comparators):
            return True
    return False


def _len_encode(node) -> bool:
    """`len(x.encode(...))` or `len(bytes(x, ...))` somewhere in an expression."""
    return any(isinstance(n, ast.Call) and _call_name(n) == "len" and any(
        isinstance(m, ast.Call) and _call_name(m) in ("encode", "bytes") for m in ast.walk(n)) for n in ast.walk(node))


def _adds_one(node) -> bool:
    """`len(... .encode()) + 1`, or `+ (1 if space else 0)` / `+ int(startswith(...))`, either order."""
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            for side, other in ((n.left, n.right), (n.right, n.left)):
                if _len_encode(side) and ((isinstance(other, ast.Constant) and other.value == 1)
                                          or _is_space_test(other)):
                    return True
    return False


def _subscript_store(node) -> str | None:
    """Name of the table in `T[i] = ...` / `T[i] += ...`."""
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
    for t in targets:
        if isinstance(t, ast.Subscript):
            base = t.value
            return base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else "?"
    return None


def _byte_tables(mod: _Module, name: str) -> list[Finding]:
    out = []
    for scope in mod.scopes:
        stores = [n for n in mod.own(scope) if isinstance(n, (ast.Assign, ast.AugAssign)) and _subscript_store(n)]
        byte_tables = {_subscript_store(n) for n in stores if isinstance(n, ast.Assign) and _len_encode(n.value)}
        in_branch = {id(n) for node in mod.own(scope) if isinstance(node, ast.If) and _is_space_test(node.test)
                     for n in _nodes(node.body)}
        flags, adds = [], []
        for n in stores:
            if not (id(n) in in_branch or _is_space_test(n.value)):
                continue
            table = _subscript_store(n)
            if table in byte_tables:
                if (isinstance(n, ast.Assign) and _adds_one(n.value)) or (
                        isinstance(n, ast.AugAssign) and isinstance(n.op, ast.Add)
                        and isinstance(n.value, ast.Constant) and n.value.value == 1):
                    adds.append(n)
            elif isinstance(n, ast.Assign) and (
                    (isinstance(n.value, ast.Constant) and n.value.value in (True, 1)) or _is_space_test(n.value)):
                flags.append(n)
        for add in adds:
            if flags:
                out.append(Finding("fail", "space_double_count", name, add.lineno,
                                   f"the byte table adds the leading-space byte (line {add.lineno}) and also flags the "
                                   f"token for a space byte at counting time (line {flags[0].lineno}): every space is "
                                   "counted twice, bpb looks ~15% better"))
            else:
                out.append(Finding("warn", "space_double_count", name, add.lineno,
                                   "the byte table adds the leading-space byte inside the table: canonical counting "
                                   "adds it only when the previous token is not a boundary; check the counting code "
                                   "does not add it again"))
    return out


# ---- 2. training on validation data before scoring it -------------------------------------------
def _loops_around(scope, target) -> list:
    """Loops of `scope` that contain `target`, outermost first."""
    chain = []

    def visit(node, loops):
        if node is target:
            chain.extend(loops)
            return True
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if visit(child, loops + [node] if isinstance(node, (ast.For, ast.While, ast.AsyncFor)) else loops):
                return True
        return False

    for stmt in scope.body:
        if visit(stmt, []):
            break
    return chain


def _contains(node, target) -> bool:
    return any(n is target for n in _nodes(node))


def _scores(mod: _Module, stmt) -> bool:
    """A statement that scores: a no_grad/inference_mode block, or a call to a scoring function."""
    for n in _nodes(stmt):
        if _is_no_grad_with(n):
            return True
        if isinstance(n, ast.Call) and (n.args or n.keywords) and (
                _call_name(n) in mod.scores or (_SCORE_NAME.search(_call_name(n)) and _call_name(n) not in mod.trains)):
            return True
    return False


def _scored_first(mod: _Module, stmts: list, target) -> bool | None:
    """True when a statement of the block scores before the one that holds the training step; None when the
    scoring and the training share one simple statement (cannot tell their order)."""
    for i, stmt in enumerate(stmts):
        if not _contains(stmt, target):
            continue
        if any(_scores(mod, s) for s in stmts[:i]):
            return True
        if not _scores(mod, stmt):
            return False
        blocks = [getattr(stmt, f) for f in ("body", "orelse", "finalbody") if getattr(stmt, f, None)]
        inner = next((b for b in blocks if any(_contains(s, target) for s in b)), None)
        return None if inner is None else _scored_first(mod, inner, target)
    return False


def _params(scope) -> set[str]:
    args = getattr(scope, "args", None)
    return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs} if args else set()


def _caller_scored_first(mod: _Module, caller, call) -> bool:
    """A call site that hands over data its own loop has scored first (phased / chunked TTT helpers)."""
    loops = _loops_around(caller, call)
    return bool(loops) and _scored_first(mod, loops[0].body, call) is True


def _throwaway(loop) -> int | None:
    """Line showing a loop trains a copy that is thrown away (a compile warm-up): it deletes a name it binds,
    or its own names say warm-up. None otherwise."""
    bound = {t.id for n in _nodes(loop.body) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    for n in _nodes(loop.body):
        if isinstance(n, ast.Delete) and any(isinstance(t, ast.Name) and t.id in bound for t in n.targets):
            return n.lineno
    if any("warmup" in ident.lower() for ident in _names(loop.target) | _names(loop.iter)) if isinstance(
            loop, (ast.For, ast.AsyncFor)) else False:
        return loop.lineno
    return None


def _validation_training(mod: _Module, name: str) -> list[Finding]:
    out = []
    for scope in mod.scopes:
        steps = [n for n in mod.own(scope) if _is_backward(n) or (
            isinstance(n, ast.Call) and _call_name(n) in mod.trains and _call_name(n) != getattr(scope, "name", None))]
        for step in steps:
            loops = _loops_around(scope, step)
            if not loops:
                continue
            outer = loops[0]
            on_val = _trains_on_val(mod, scope, outer, step)
            if not on_val:
                continue
            first = _scored_first(mod, outer.body, step)
            if first:
                continue
            ident, origin = on_val
            data = ident if ident == origin else f"{ident}, from {origin}"
            what = f"`{_call_name(step)}()`" if not _is_backward(step) else "the backward pass"
            if first is None:
                out.append(Finding("warn", "val_trained_before_scored", name, step.lineno,
                                   f"a loop scores and trains on validation data ({data}) in one statement; "
                                   "cannot tell whether each token is scored before it is trained on"))
                continue
            if origin in _params(scope):                     # the caller decides what this data is
                calls = [(c, n) for c in mod.scopes for n in mod.own(c)
                         if isinstance(n, ast.Call) and _call_name(n) == scope.name and c is not scope]
                unscored = [n for c, n in calls if not _caller_scored_first(mod, c, n)]
                if calls and not unscored:
                    continue
                if not calls:
                    out.append(Finding("warn", "val_trained_before_scored", name, step.lineno,
                                       f"{what} in `{scope.name}` trains on its parameter `{origin}` (validation "
                                       "data by its name); no call in this file shows whether it was scored first"))
                    continue
                data += f", given at line {unscored[0].lineno} by a caller that has not scored it first"
            thrown = _throwaway(outer)
            if thrown is not None:
                out.append(Finding("warn", "val_trained_before_scored", name, step.lineno,
                                   f"{what} trains on validation data ({data}) in what looks like a warm-up of a copy "
                                   f"that is thrown away (line {thrown}): legal only if nothing it learns reaches "
                                   "the scored model"))
                continue
            out.append(Finding("fail", "val_trained_before_scored", name, step.lineno,
                               f"{what} in the loop at line {outer.lineno} trains on validation data ({data}) "
                               "before it is scored (pre-quantisation TTT); score-first TTT scores each chunk "
                               "under torch.inference_mode() before training on it"))
    return _dedupe(out)


_DATA_METHODS = {"to", "split", "chunk", "view", "reshape", "narrow", "unfold", "long", "int", "cuda", "contiguous",
                 "flatten", "clone"}


def _val_sources(mod: _Module, scope) -> dict[str, str]:
    """Names of a scope that hold validation data -> the name it came from (a validation-like name, or a
    parameter that some call site gives validation data): slices, splits and copies of such data and loop
    variables over it count; scalars computed from it (a loss) do not."""
    out = {p: p for p in mod.val_params.get(getattr(scope, "name", ""), {})}

    def root(ident: str) -> str | None:
        return ident if _VAL_NAME.search(ident) else out.get(ident)

    def data_of(expr) -> str | None:
        if isinstance(expr, ast.Name):
            return root(expr.id)
        if isinstance(expr, ast.Subscript):
            return data_of(expr.value)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in _DATA_METHODS:
            return data_of(expr.func.value)
        if isinstance(expr, ast.Call) and _call_name(expr) in ("enumerate", "zip", "iter", "list", "reversed"):
            return next((d for a in expr.args if (d := data_of(a))), None)
        if isinstance(expr, ast.Attribute):
            return expr.attr if _VAL_NAME.search(expr.attr) else None
        return None

    bound: dict[str, list] = {}                     # name -> every value assigned to it in the scope
    for t, v in mod.bindings(scope):
        for name in (x.id for x in ast.walk(t) if isinstance(x, ast.Name)):
            bound.setdefault(name, []).append(v)
    for _ in range(3):
        for name, values in bound.items():
            if name in out or _VAL_NAME.search(name):
                continue
            srcs = [data_of(v) for v in values]
            if all(srcs):                             # a name that also holds other data is not counted
                out[name] = srcs[0]
    return out


def _val_ident(mod: _Module, scope, node, sources: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(name, where its validation data comes from) for the first validation data a node reads, else None."""
    sources = mod.sources[id(scope)] if sources is None else sources
    for ident in sorted(_names(node)):
        if ident in sources:
            return ident, sources[ident]
        if _VAL_NAME.search(ident):
            return ident, ident
    return None


def _trains_on_val(mod: _Module, scope, loop, step) -> tuple[str, str] | None:
    """(name, origin) of the validation data the training step in `loop` uses; None when it uses none. A
    helper that scores inside itself is judged on its own, not here."""
    sources = mod.sources[id(scope)]
    if not _is_backward(step):
        helper = mod.functions.get(_call_name(step))
        if helper is not None and any(_scores(mod, s) for s in helper.body):
            return None
        return next((v for a in step.args + [k.value for k in step.keywords]
                     if (v := _val_ident(mod, scope, a, sources))), None)
    for stmt in loop.body:
        if _scores(mod, stmt) and not _contains(stmt, step):
            continue
        found = _val_ident(mod, scope, stmt, sources)
        if found:
            return found
    return None


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        if (f.pattern, f.line) not in seen:
            seen.add((f.pattern, f.line))
            out.append(f)
    return out


# ---- 3. hashed n-gram keys that include the target -----------------------------------------------
def _is_hash(node) -> bool:
    """xor of token ids, or (multiply by a large constant) then modulo: the usual n-gram bucket hash."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        return True
    if isinstance(node, ast.Call) and _call_name(node) == "bitwise_xor":
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult) and any(
            isinstance(s, ast.Constant) and isinstance(s.value, int) and s.value >= _BIG_CONSTANT
            for s in (n.left, n.right)) for n in ast.walk(node.left))
    return False


def _forward_shift(node) -> bool:
    """`x[1:]`, `x[:, 1:]`, `x[..., 1:]` or torch.roll(x, -1): the token after each position."""
    if isinstance(node, ast.Subscript):
        sl = node.slice
        last = sl.elts[-1] if isinstance(sl, ast.Tuple) and sl.elts else sl
        return (isinstance(last, ast.Slice) and isinstance(last.lower, ast.Constant) and last.lower.value == 1
                and last.upper is None)
    if isinstance(node, ast.Call) and _call_name(node) == "roll" and len(node.args) >= 2:
        shift = node.args[1]
        return isinstance(shift, ast.UnaryOp) and isinstance(shift.op, ast.USub)
    return False


def _target_names(mod: _Module, scope) -> dict[str, int]:
    """Names that hold targets in a scope: conventional names, and names assigned a forward shift or another
    target name (two passes, so chains settle)."""
    out: dict[str, int] = {}
    args = getattr(scope, "args", None)
    if args is not None:
        for a in args.posonlyargs + args.args + args.kwonlyargs:
            if a.arg in _TARGET_NAMES:
                out[a.arg] = a.lineno
    for _ in range(2):
        for t, v in mod.bindings(scope):
            if not isinstance(t, ast.Name) or _is_hash(v):
                continue
            if t.id in _TARGET_NAMES or _forward_shift(v) or any(isinstance(m, ast.Name) and m.id in out
                                                                 for m in ast.walk(v)):
                out.setdefault(t.id, v.lineno)
    return out


def _feeds_embedding(mod: _Module, scope, hash_node) -> bool:
    """The hash is an embedding index: passed to F.embedding / an *emb*/*table* module, or used to index one,
    directly or through the name it is assigned to."""
    holders = {t.id for n in mod.own(scope) if isinstance(n, ast.Assign) and _contains(n.value, hash_node)
               for t in n.targets if isinstance(t, ast.Name)}
    for n in mod.own(scope):
        uses = []
        if isinstance(n, ast.Call) and (_call_name(n) == "embedding" or _EMBED_CALL.search(_call_name(n))):
            uses = n.args
        elif isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Load) and _EMBED_INDEX.search(
                n.value.attr if isinstance(n.value, ast.Attribute) else getattr(n.value, "id", "")):
            uses = [n.slice]
        for u in uses:
            if _contains(u, hash_node) or _names(u) & holders:
                return True
    return False


def _ngram_keys(mod: _Module, name: str) -> list[Finding]:
    out = []
    for scope in mod.scopes:
        targets = _target_names(mod, scope)
        for node in mod.own(scope):
            if not _is_hash(node):
                continue
            hit = sorted(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in targets)
            if not hit:
                continue
            if _feeds_embedding(mod, scope, node):
                out.append(Finding("fail", "ngram_key_has_target", name, node.lineno,
                                   f"a hashed n-gram key includes the target `{hit[0]}` and indexes an embedding: the "
                                   "model sees the token it is asked to predict"))
            else:
                out.append(Finding("warn", "ngram_key_has_target", name, node.lineno,
                                   f"a hashed key includes the target `{hit[0]}`: legal only for counts of tokens "
                                   "already scored; check that it never feeds the prediction of that same token"))
    return _dedupe(out)


# ---- 4. where a calibration reads training data (evidence for the audit's train_data_after_timer) -------------
_CALIB_FUNC = re.compile(r"hessian|calibrat", re.I)
_TRAIN_DATA = re.compile(r"^train_(?:loader|files|tokens|shards|data|stream|batch_tokens)$|^train_loader", re.I)


@dataclass(frozen=True)
class Read:
    file: str
    line: int
    function: str
    call: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in `{self.function}`: `{self.call}`"


def calibration_reads(paths: list[Path], root: Path | None = None) -> list[Read]:
    """Where a calibration function (its name says hessian/calibration) draws batches of training data: a
    call whose receiver or arguments are training-data names (`train_loader.next_batch(h.train_batch_tokens)`).
    It shows what a log's calibration line reads; when it runs is the log's to say."""
    out: list[Read] = []
    for p in paths:
        try:
            source = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        name = str(p.relative_to(root)) if root else p.name
        out += [Read(name, line, fn, call) for line, fn, call in _calibration_reads(source)]
    return out


@lru_cache(maxsize=16)
def _calibration_reads(source: str) -> tuple[tuple[int, str, str], ...]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ()
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _CALIB_FUNC.search(fn.name):
            continue
        for node in _nodes(fn.body):
            if isinstance(node, ast.Call) and any(_TRAIN_DATA.search(n) for n in _names(node)):
                found.append((node.lineno, fn.name, ast.unparse(node)[:90]))
                break
    return tuple(found)
