"""`python app.py`: Fixbot's Slack side and its worker processes, until SIGTERM or SIGINT.

bot/service.py serves; bot/wiring.py builds the parts (the operator CLI shares it).
"""

import sys

from bot.service import main

if __name__ == "__main__":
    sys.exit(main())
