// The console's home: links to the chat and the inbox, and whether the cluster answers.

import {api, setUpSignIn} from "./common.js";

setUpSignIn();
const health = document.getElementById("health");
try {
  await api("GET", "/ok");
  const waiting = await api("POST", "/threads/search", {status: "interrupted", limit: 1000});
  health.textContent = `The cluster is up. ${waiting.length} thread(s) wait for an approval.`;
} catch (error) {
  health.textContent = error.message;
  health.classList.add("error");
}
