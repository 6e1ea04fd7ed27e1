"""Email templates (Jinja2): `<name>.subject.txt`, `<name>.txt` and `<name>.html` for each
message, from MAIL_TEMPLATES_DIR first (an operator's own wording and branding, file by file)
and then from this package. HTML is autoescaped; the plain text is not (it is not markup)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str

    def message(self, *, sender: str, to: str, message_id: str) -> EmailMessage:
        """A multipart/alternative message: plain text first, HTML as the richer part."""
        message = EmailMessage()
        message["From"] = sender
        message["To"] = to
        message["Subject"] = self.subject
        message["Message-ID"] = message_id
        message.set_content(self.text)
        message.add_alternative(self.html, subtype="html")
        return message


class MailTemplates:
    def __init__(self, override_dir: Path | None = None) -> None:
        loaders = [FileSystemLoader(override_dir)] if override_dir else []
        # Sandboxed: an operator's template folder is configuration, not code to trust with
        # the process. StrictUndefined: a misspelt variable fails the render, not the email.
        self._env = SandboxedEnvironment(
            loader=ChoiceLoader([*loaders, PackageLoader("app.mail", "templates")]),
            autoescape=lambda name: bool(name and name.endswith(".html")),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(self, name: str, context: Mapping[str, object]) -> Rendered:
        subject = self._env.get_template(f"{name}.subject.txt").render(context)
        return Rendered(
            subject=" ".join(subject.split()),  # one line: a header cannot hold a newline
            text=self._env.get_template(f"{name}.txt").render(context),
            html=self._env.get_template(f"{name}.html").render(context),
        )
