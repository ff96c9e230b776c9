"""emojivoto rewritten in Python: emoji, voting, web and vote-bot, the mesh demo application."""
