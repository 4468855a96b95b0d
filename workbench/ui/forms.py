"""Streamlit widgets for config dataclass fields (`workbench.forms`): one widget per field."""

from __future__ import annotations

from typing import Any

from workbench.forms import FormField


def widget(container: Any, spec: FormField, default: Any, key: str) -> Any:
    """The widget of one config field, with its default and help; returns its value."""
    if spec.kind == "bool":
        return container.checkbox(spec.name, value=default, help=spec.help, key=key)
    if spec.kind == "int":
        return container.number_input(spec.name, value=default, step=1, help=spec.help, key=key)
    if spec.kind == "float":
        value = None if default is None else float(default)
        return container.number_input(spec.name, value=value, format="%g", help=spec.help, key=key)
    if spec.kind == "choice":
        return container.selectbox(
            spec.name, spec.choices, index=spec.choices.index(default), help=spec.help, key=key
        )
    return container.text_input(spec.name, value=default, help=spec.help, key=key)


def config_widgets(
    container: Any, specs: list[FormField], defaults: dict[str, Any], key_prefix: str, columns: int = 3
) -> dict[str, Any]:
    """Widgets for ``specs`` in ``columns`` columns of ``container``.

    Args:
        container: Where the widgets go (``st``, an expander, a form).
        specs: The fields, from `workbench.forms.form_fields`.
        defaults: Field name -> initial value where the page knows a better one than the field's.
        key_prefix: Prefix of the widgets' keys (``<prefix>_<field name>``).
        columns: Columns the widgets are laid out in, row by row.

    Returns:
        Field name -> the widget's value, for `workbench.forms.config_from_form`.
    """
    cells = container.columns(columns)
    return {
        spec.name: widget(
            cells[i % columns], spec, defaults.get(spec.name, spec.default), f"{key_prefix}_{spec.name}"
        )
        for i, spec in enumerate(specs)
    }
