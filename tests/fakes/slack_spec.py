"""What Slack accepts: the product's own checks (`bot.local.slack_spec`), re-exported."""

from bot.local.slack_spec import (
    MESSAGE_BLOCK_LIMIT,
    VIEW_BLOCK_LIMIT,
    SpecProblem,
    WebApiSpec,
    check_blocks,
)

__all__ = ["MESSAGE_BLOCK_LIMIT", "VIEW_BLOCK_LIMIT", "SpecProblem", "WebApiSpec", "check_blocks"]
