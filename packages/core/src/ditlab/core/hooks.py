"""Hooks: the one way to change a model's forward from outside, without touching its code.

A `Hook` says what it changes as a list of patches: `wrap(module, "run_blocks", fn)` wraps a method of a
module (the model or any submodule), `override(block, "num_heads", 2)` replaces an attribute's value. A
`HookRegistry` (one per module, `registry(model)`) installs hooks by name and removes them; only the registry
sets instance attributes, and removing the last patch of an attribute restores the instance exactly as it was
(its own value put back, or the attribute deleted so that the class's method shows again). Several hooks on
one method compose: each new wrapper wraps what was installed before it, so the first registered sits next
to the original method and the last registered is called first; removing any of them rebuilds the chain of
the others. A hook names the hooks it cannot coexist with (`conflicts`), and installing it next to one of
them, or next to a hook of the same name, raises `HookConflict` naming the installed hook.

Per-context state: a stateful hook (`new_state`) keeps one state per context, an independent stream of calls
(a CFG branch, a chunk of the slices of a volume), created on first use; `with context(model, "chunk-1"):`
selects the context of the calls made inside it, `DEFAULT_CONTEXT` when none is selected. Installing a hook
starts it afresh, with no states.

    with attached(model, MyHook()):          # or registry(model).add(hook) ... .remove(hook.name)
        with context(model, "chunk-0"):
            model(x0, t)
        with context(model, "chunk-1"):
            model(x1, t)
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from ditlab.core.errors import InputError, UsageError

__all__ = ["DEFAULT_CONTEXT", "Hook", "HookConflict", "HookRegistry", "Patch", "attached", "context", "override",
           "registry", "wrap"]

DEFAULT_CONTEXT = "default"
_UNSET = object()


class HookConflict(UsageError):
    """A hook cannot be installed: a hook of the same name, or one it cannot coexist with, is installed already."""


@dataclass(frozen=True, eq=False)
class Patch:
    """One change a hook makes (build it with `wrap` or `override`): `wrapper(inner, *args, **kwargs)` around
    the method `module.attr`, where `inner` is the method as it was before (the original or the previous
    hook's wrapper), or a new `value`."""

    module: nn.Module
    attr: str
    wrapper: Callable[..., Any] | None = None
    value: Any = _UNSET

    def __post_init__(self) -> None:
        if (self.wrapper is None) == (self.value is _UNSET):
            raise InputError(f"a patch of {type(self.module).__name__}.{self.attr} takes a wrapper or a value, "
                             f"not both or neither (build it with hooks.wrap or hooks.override)")

    def apply(self, inner: Any) -> Any:
        """The attribute's value with this patch on top of `inner`."""
        if self.wrapper is None:
            return self.value
        wrapper = self.wrapper

        @functools.wraps(inner)
        def method(*args, **kwargs):
            return wrapper(inner, *args, **kwargs)

        return method


def _patchable(module: nn.Module, attr: str, change: str) -> Any:
    """The current value of `module.attr` if a hook may change it: an attribute of the instance or its class,
    not a parameter, buffer or submodule (those are state the model saves)."""
    if attr not in vars(module) and not hasattr(type(module), attr):
        what = "it is a parameter, buffer or submodule" if hasattr(module, attr) else "it has no such attribute"
        raise InputError(f"cannot {change} {type(module).__name__}.{attr}: {what}; hooks change methods and plain "
                         f"attributes")
    return getattr(module, attr)


def wrap(module: nn.Module, attr: str, wrapper: Callable[..., Any]) -> Patch:
    """A patch that calls `wrapper(inner, *args, **kwargs)` in place of the method `module.attr`."""
    value = _patchable(module, attr, "wrap")
    if not callable(value):
        raise InputError(f"cannot wrap {type(module).__name__}.{attr}: expected a method, got {type(value).__name__}")
    return Patch(module, attr, wrapper=wrapper)


def override(module: nn.Module, attr: str, value: Any) -> Patch:
    """A patch that gives the attribute `module.attr` (of the instance or its class) the value `value`."""
    _patchable(module, attr, "override")
    return Patch(module, attr, value=value)


class Hook:
    """A named change to a module's methods or attributes, installed by a `HookRegistry`.

    Subclasses set `name` (one hook per name on a module), optionally `conflicts` (names of hooks they cannot
    be installed next to), return their patches from `patches(module)`, and, if stateful, a fresh per-context
    state from `new_state()`; their wrappers read the current context's state with `state()`.
    """

    name: str = "hook"
    conflicts: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._registry: HookRegistry | None = None
        self._states: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @property
    def registry(self) -> HookRegistry | None:
        """The registry this hook is installed in, None when it is not installed."""
        return self._registry

    def patches(self, module: nn.Module) -> list[Patch]:
        """What installing this hook on `module` changes (`wrap` / `override` patches)."""
        raise NotImplementedError(f"{type(self).__name__} must define patches(module): the changes it makes")

    def new_state(self) -> Any:
        """A fresh state for one context; None (the default) for a stateless hook."""
        return None

    def state(self, context: str | None = None) -> Any:
        """The state of `context` (default: the registry's current context), created on first use."""
        if context is None:
            context = self._registry.current_context if self._registry is not None else DEFAULT_CONTEXT
        if context not in self._states:
            self._states[context] = self.new_state()
        return self._states[context]

    @property
    def states(self) -> dict[str, Any]:
        """Context name -> state, for every context used since this hook was installed."""
        return dict(self._states)


class _Slot:
    """One patched attribute: what the instance had of its own (restored at the end) and the patches on it."""

    def __init__(self, module: nn.Module, attr: str):
        self.saved = vars(module).get(attr, _UNSET)
        self.base = getattr(module, attr)  # what the first patch wraps
        self.patches: list[Patch] = []


_SLOTS: weakref.WeakKeyDictionary[nn.Module, dict[str, _Slot]] = weakref.WeakKeyDictionary()
_REGISTRIES: weakref.WeakKeyDictionary[nn.Module, HookRegistry] = weakref.WeakKeyDictionary()


def _rebuild(module: nn.Module, attr: str) -> None:
    """Set `module.attr` to its patches applied in order over the original, or restore it without patches."""
    slots = _SLOTS[module]
    slot = slots[attr]
    if slot.patches:
        value = slot.base
        for patch in slot.patches:
            value = patch.apply(value)
        setattr(module, attr, value)
        return
    if slot.saved is _UNSET:
        delattr(module, attr)
    else:
        setattr(module, attr, slot.saved)
    del slots[attr]
    if not slots:
        del _SLOTS[module]


class HookRegistry:
    """The named hooks installed on one module, and the current context of their per-context state.
    Get a module's registry with `registry(module)` (or `HookRegistry.of(module)`); it is kept outside the
    module (no instance attribute) and lets the module be freed once no hook is installed."""

    def __init__(self, module: nn.Module):
        self._module = weakref.ref(module)
        self._hooks: dict[str, tuple[Hook, list[Patch]]] = {}
        self._context = DEFAULT_CONTEXT

    @classmethod
    def of(cls, module: nn.Module) -> HookRegistry:
        """The registry of `module`, created on first use."""
        if not isinstance(module, nn.Module):
            raise InputError(f"hooks are installed on torch modules, got {type(module).__name__}")
        if module not in _REGISTRIES:
            _REGISTRIES[module] = cls(module)
        return _REGISTRIES[module]

    @property
    def module(self) -> nn.Module:
        return self._module()

    def __repr__(self) -> str:
        return f"HookRegistry({type(self.module).__name__}, hooks={self.names}, context={self._context!r})"

    @property
    def names(self) -> list[str]:
        """Names of the installed hooks, in installation order."""
        return list(self._hooks)

    def __contains__(self, name: str) -> bool:
        return name in self._hooks

    def get(self, name: str) -> Hook | None:
        """The installed hook called `name`, or None."""
        return self._hooks[name][0] if name in self._hooks else None

    def add(self, hook: Hook) -> Hook:
        """Install `hook` (with no states yet) on top of the installed ones; returns it."""
        self._check(hook)
        patches = list(hook.patches(self.module))
        for patch in patches:
            slots = _SLOTS.setdefault(patch.module, {})
            if patch.attr not in slots:
                slots[patch.attr] = _Slot(patch.module, patch.attr)
            slots[patch.attr].patches.append(patch)
            _rebuild(patch.module, patch.attr)
        hook._registry, hook._states = self, {}
        self._hooks[hook.name] = hook, patches
        return hook

    def _check(self, hook: Hook) -> None:
        if not isinstance(hook, Hook):
            raise InputError(f"expected a ditlab.core.hooks.Hook, got {type(hook).__name__}")
        target = type(self.module).__name__
        if hook.registry is not None:
            raise HookConflict(f"{hook!r} is already installed on {type(hook.registry.module).__name__}; "
                               f"use one hook instance per module")
        if hook.name in self._hooks:
            raise HookConflict(f"cannot install {hook!r} on {target}: a hook named {hook.name!r} is already "
                               f"installed ({self.get(hook.name)!r}); remove it first")
        for name, (other, _) in self._hooks.items():
            if name in hook.conflicts or hook.name in other.conflicts:
                raise HookConflict(f"cannot install {hook!r} on {target}: {hook.name!r} cannot be combined with "
                                   f"the installed hook {name!r} ({other!r}); remove it first")

    def remove(self, name: str) -> Hook:
        """Uninstall the hook called `name` and restore what only it changed; returns it."""
        if name not in self._hooks:
            raise InputError(f"no hook named {name!r} is installed on {type(self.module).__name__}; "
                             f"installed: {self.names}")
        hook, patches = self._hooks.pop(name)
        for patch in reversed(patches):
            slot = _SLOTS[patch.module][patch.attr]
            slot.patches = [p for p in slot.patches if p is not patch]
            _rebuild(patch.module, patch.attr)
        hook._registry = None
        return hook

    @contextlib.contextmanager
    def attached(self, *hooks: Hook) -> Iterator[HookRegistry]:
        """Install `hooks` in order for the block; they are removed on exit, also on errors (and the ones
        already installed are removed when a later one cannot be)."""
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                self.add(hook)
                stack.callback(self.remove, hook.name)
            yield self

    @property
    def current_context(self) -> str:
        """The context whose state the stateful hooks use now."""
        return self._context

    @contextlib.contextmanager
    def context(self, name: str) -> Iterator[str]:
        """Make `name` the current context for the block (contexts nest; the outer one comes back on exit)."""
        if not isinstance(name, str) or not name:
            raise InputError(f"a context name must be a non-empty string, got {name!r}")
        previous, self._context = self._context, name
        try:
            yield name
        finally:
            self._context = previous


def registry(module: nn.Module) -> HookRegistry:
    """The hook registry of `module`, created on first use."""
    return HookRegistry.of(module)


def attached(module: nn.Module, *hooks: Hook) -> contextlib.AbstractContextManager[HookRegistry]:
    """`with attached(model, hook, ...):` installs the hooks on `model` for the block (see `HookRegistry.attached`)."""
    return HookRegistry.of(module).attached(*hooks)


def context(module: nn.Module, name: str) -> contextlib.AbstractContextManager[str]:
    """`with context(model, "chunk-1"):` the calls of `model` inside use the hooks' state of context `name`."""
    return HookRegistry.of(module).context(name)
