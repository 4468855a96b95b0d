"""`workbench user ...`: people who may sign in to the app, with their roles."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from workbench.access import AccessConfig, AccessError, Role, add_user, list_users, remove_user, set_password
from workbench.cli.common import console, open_store, print_json, print_table, user_errors
from workbench.settings import Settings

app = typer.Typer(no_args_is_help=True)

PASSWORD_ENV = "WORKBENCH_PASSWORD"
"""Environment variable a script may set instead of answering the password prompt."""

_PASSWORD_FILE = typer.Option(
    None,
    "--password-file",
    help=f"Read the password from the first line of this file (for scripts; else ${PASSWORD_ENV}, else a hidden prompt).",
)


def _users_file(ctx: typer.Context) -> Path:
    settings: Settings = ctx.obj
    return AccessConfig.from_env(settings.home).users_file


def _password(password_file: Path | None) -> str:
    """The new password: from --password-file, else $WORKBENCH_PASSWORD, else a hidden prompt asked twice."""
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except OSError as e:
            raise AccessError(f"cannot read the password file {password_file}: {e.strerror}") from e
        if not lines:
            raise AccessError(f"the password file {password_file} is empty")
        return lines[0]
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Sign-in name; also the annotator's name in the store."),
    role: Role = typer.Option(
        "annotator", "--role", help="annotator: the annotation pages; admin: every page."
    ),
    password_file: Path | None = _PASSWORD_FILE,
) -> None:
    """Add a person who may sign in, linked to the annotator of the same name."""
    with user_errors():
        path = _users_file(ctx)
        user = add_user(open_store(ctx), path, name, role, _password(password_file))
    console.print(
        f"added {user.name} ({user.role}, annotator {user.annotator_id}) to {path}", highlight=False
    )


@app.command("passwd")
def passwd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The user whose password changes."),
    password_file: Path | None = _PASSWORD_FILE,
) -> None:
    """Set a new password for a user."""
    with user_errors():
        set_password(_users_file(ctx), name, _password(password_file))
    console.print(f"password of {name} changed", highlight=False)


@app.command("remove")
def remove(ctx: typer.Context, name: str = typer.Argument(..., help="The user to remove.")) -> None:
    """Remove a user; their judgments stay in the store under their annotator."""
    with user_errors():
        remove_user(_users_file(ctx), name)
    console.print(f"removed {name}", highlight=False)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every user with role and annotator id."""
    with user_errors():
        path = _users_file(ctx)
        users = [{"name": u.name, "role": u.role, "annotator": u.annotator_id} for u in list_users(path)]
    if as_json:
        print_json(users)
        return
    print_table(users, empty=f"no users in {path}")
