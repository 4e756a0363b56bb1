"""The fix plan as data: what the planning step returns, Fixbot renders and Slack shows."""

from pydantic import BaseModel, Field


class Plan(BaseModel):
    """A fix plan as structured data: what the planning step returns and Slack shows."""

    summary: str = Field(description="One or two sentences: what is broken and the fix.")
    root_cause: str = Field(description="Why it breaks, with file:line evidence.")
    evidence: list[str] = Field(default=[], description="file:line locations that show it.")
    files: list[str] = Field(default=[], description="Files the fix will change.")
    test_plan: str = Field(description="The failing test to write first, and where.")
    change: str = Field(description="The code change that makes the test pass.")
    risk: str = Field(description="What could go wrong, and how likely.")
    out_of_scope: str = Field(default="", description="What this fix deliberately leaves.")
