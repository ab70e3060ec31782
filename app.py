"""The EDT web explorer (Gradio). Run: python app.py"""

import sys

if __name__ == "__main__":
    print("The web explorer is not built yet; see the README for what works today.")
    sys.exit(0)
