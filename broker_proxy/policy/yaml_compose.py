"""Policy text to YAML nodes, never to Python objects, with every YAML error in one line.

Composing (not constructing) keeps each node's line and column for the messages, and means no
YAML tag can make the parser build anything but plain values.
"""

from __future__ import annotations

import yaml

from broker_proxy.policy.field_checker import FieldChecker
from broker_proxy.policy.issues import PolicyError


class _NodeLoader(yaml.SafeLoader):
    """SafeLoader that records anchors and aliases as problems while composing.

    An alias makes one node appear under two paths, so an edit in one place silently changes
    another; policies are short enough to write out.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.rejected: list[tuple[yaml.Mark, str]] = []

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.rejected.append((event.start_mark, "YAML aliases (*name) are not supported; "
                                                    "write the value out"))
        elif getattr(event, "anchor", None) is not None:
            self.rejected.append((event.start_mark, "YAML anchors (&name) are not supported; "
                                                    "write the value out"))
        return super().compose_node(parent, index)


def compose_fast(text: str) -> yaml.Node | bool | None:
    """libyaml's composer, where it is there and can be trusted with this text; else False.

    It is ten times faster than the pure-Python one on a large policy and gives nodes the same
    line and column marks. It cannot see anchors, so a text that may hold one ("&") goes the
    slow way, as does one the pure-Python reader would refuse; so does any error, to be
    reported in the pure-Python loader's words.
    """
    if not getattr(yaml, "__with_libyaml__", False) or "&" in text \
            or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return False
    loader = yaml.CSafeLoader(text)
    try:
        return loader.get_single_node()
    except (yaml.YAMLError, RecursionError):
        return False
    finally:
        loader.dispose()


def compose(text: str, checker: FieldChecker) -> yaml.Node | None:
    """The root node of ``text`` (None for an empty file); a text that is not YAML raises
    ``PolicyError`` with that one problem, anchors and aliases are reported to ``checker``."""
    fast = compose_fast(text)
    if fast is not False:
        return fast
    loader = None
    try:
        # The reader rejects control characters as soon as it is built, hence inside the try.
        loader = _NodeLoader(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        parts = [" ".join(part.split()) for part in (error.context, error.problem) if part]
        checker.report(mark, "", "invalid YAML: " + ", ".join(parts))
        raise PolicyError(checker.issues) from None
    except yaml.reader.ReaderError as error:
        position = error.position
        line = text.count("\n", 0, position)
        column = position - (text.rfind("\n", 0, position) + 1)
        checker.report(yaml.Mark("", position, line, column, None, None), "",
                       f"invalid YAML: control character U+{error.character:04X} is not allowed")
        raise PolicyError(checker.issues) from None
    except yaml.YAMLError as error:
        checker.report(yaml.Mark("", 0, 0, 0, None, None), "",
                       "invalid YAML: " + " ".join(str(error).split()))
        raise PolicyError(checker.issues) from None
    except RecursionError:
        # The composer recurses per level; "[[[[..." thousands deep must not be a traceback.
        checker.report(yaml.Mark("", 0, 0, 0, None, None), "", "invalid YAML: nested too deeply")
        raise PolicyError(checker.issues) from None
    finally:
        if loader is not None:
            loader.dispose()
    for mark, message in loader.rejected:
        checker.report(mark, "", message)
    return root
